//! `Range` values through the static-file front, against files served whole
//! and streamed: a 206 carries exactly the bytes its Content-Range names, a
//! 200 the whole file, a 416 the length and no content.
#![no_main]

use http::{Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use mles_fuzz::{files, site};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, value)) = data.split_first() else {
        return;
    };
    let Ok(range) = header::HeaderValue::from_bytes(value) else {
        return;
    };
    let (path, file) = &files()[pick as usize % files().len()];
    let req = Request::builder()
        .uri(format!("/{}", path.replace('%', "%25").replace(' ', "%20")))
        .header(header::RANGE, range)
        .body(())
        .expect("a valid request");
    let (res, body) = site().serve(&req);
    let len = file.len() as u64;
    let content_range = res
        .headers()
        .get(header::CONTENT_RANGE)
        .map(|v| v.to_str().expect("Content-Range is ASCII").to_string());
    match res.status() {
        StatusCode::OK => {
            assert_eq!(&body[..], &file[..], "{value:?}");
            assert_eq!(content_range, None);
        }
        StatusCode::PARTIAL_CONTENT => {
            let cr = content_range.expect("206 has Content-Range");
            let (span, total) = cr
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('/'))
                .unwrap_or_else(|| panic!("{cr:?}"));
            assert_eq!(total.parse::<u64>().ok(), Some(len), "{cr:?}");
            let (a, b) = span.split_once('-').unwrap_or_else(|| panic!("{cr:?}"));
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            assert!(a <= b && b < len, "{cr:?} for {len} bytes");
            assert_eq!(&body[..], &file[a as usize..=b as usize], "{value:?}");
            assert_eq!(
                res.headers().get(header::CONTENT_LENGTH).map(|v| v.as_bytes().to_vec()),
                Some((b - a + 1).to_string().into_bytes())
            );
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            assert_eq!(content_range, Some(format!("bytes */{len}")), "{value:?}");
            assert!(len == 0 || body[..] != file[..]);
        }
        s => panic!("{s} for Range {value:?} on {path}"),
    }
});
