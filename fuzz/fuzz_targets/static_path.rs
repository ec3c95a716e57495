//! Request paths through the static-file front: whatever the target, nothing
//! outside the root or hidden is served, a 200 is exactly one of the site's
//! files, and the server never answers with an internal error.
#![no_main]

use http::{Method, Request, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;
use mles_fuzz::{HIDDEN, OUTSIDE, contains, files, site};

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    // What hyper would hand over: only targets that parse as a URI.
    let Ok(uri) = target.parse::<Uri>() else {
        return;
    };
    let head = data.first() == Some(&b'/') && data.len() % 2 == 1;
    let req = Request::builder()
        .method(if head { Method::HEAD } else { Method::GET })
        .uri(uri)
        .body(())
        .expect("a parsed URI makes a request");
    let (res, body) = site().serve(&req);
    assert!(!contains(&body, OUTSIDE), "{target:?} escaped the root");
    assert!(!contains(&body, HIDDEN), "{target:?} served a hidden file");
    assert_ne!(
        res.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "{target:?}: {:?}",
        String::from_utf8_lossy(&body)
    );
    if res.status() == StatusCode::OK && !head {
        assert!(
            files().iter().any(|(_, f)| *f == body[..]),
            "{target:?}: a 200 body that is no file of the site"
        );
    }
});
