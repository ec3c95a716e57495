//! What a file's name says about serving it: media type (with charset),
//! whether compressing it pays, and how long caches may keep it. Pure.

use http::header::HeaderValue;
use mime_guess::Mime;

/// `text/*` and the structured text types get `charset=utf-8`.
fn is_text(mime: &Mime) -> bool {
    mime.type_() == mime_guess::mime::TEXT
        || matches!(
            mime.suffix().map(|s| s.as_str()),
            Some("json") | Some("xml")
        )
        || matches!(
            mime.essence_str(),
            "application/javascript" | "application/json" | "application/xml"
        )
}

/// Types worth compressing: text, plus uncompressed binary formats.
pub fn is_compressible(mime: &Mime) -> bool {
    is_text(mime)
        || matches!(
            mime.essence_str(),
            "application/wasm"
                | "image/x-icon"
                | "image/vnd.microsoft.icon"
                | "image/bmp"
                | "font/ttf"
                | "font/otf"
        )
}

/// The `Content-Type` value: the type, with `charset=utf-8` for text.
pub fn content_type(mime: &Mime) -> HeaderValue {
    let v = if is_text(mime) {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_string()
    };
    HeaderValue::from_str(&v).expect("MIME types are ASCII")
}

/// HTML names the other resources, so it is revalidated on every use; the
/// rest may be reused for an hour (assets are not fingerprinted, so not
/// longer: a site update shows within the hour at worst).
pub fn cache_control(mime: &Mime) -> HeaderValue {
    HeaderValue::from_static(if mime.essence_str() == "text/html" {
        "no-cache"
    } else {
        "public, max-age=3600"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mime(p: &str) -> Mime {
        mime_guess::from_path(p).first_or_octet_stream()
    }

    #[test]
    fn types() {
        assert_eq!(content_type(&mime("a.html")), "text/html; charset=utf-8");
        assert_eq!(content_type(&mime("a.css")), "text/css; charset=utf-8");
        assert!(
            content_type(&mime("a.js"))
                .to_str()
                .unwrap()
                .ends_with("javascript; charset=utf-8")
        );
        assert_eq!(
            content_type(&mime("a.json")),
            "application/json; charset=utf-8"
        );
        assert_eq!(content_type(&mime("a.svg")), "image/svg+xml; charset=utf-8");
        assert_eq!(content_type(&mime("a.png")), "image/png");
        assert_eq!(content_type(&mime("noext")), "application/octet-stream");
        assert!(is_compressible(&mime("a.js")));
        assert!(is_compressible(&mime("a.wasm")));
        assert!(!is_compressible(&mime("a.png")));
        assert!(!is_compressible(&mime("a.woff2")));
        assert!(!is_compressible(&mime("noext")));
    }
}
