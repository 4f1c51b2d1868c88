//! Connecting to the broker, in plain AMQP or over TLS.
//!
//! An `amqps://` URL is verified against the system's certificate authorities, or against the CA
//! file named by the `cacertfile` query parameter (the name RabbitMQ's own URI spec uses), e.g.
//! `amqps://rafty-worker:…@broker:5671/%2f?heartbeat=15&cacertfile=/etc/rafty/ca.pem`.

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};

use crate::Error;

/// Query parameter naming a PEM file of CA certificates that the broker's certificate must chain to.
pub const CA_CERT_FILE_PARAM: &str = "cacertfile";

/// Open a connection named `name` (shown in the broker's management UI) to `url`.
pub async fn connect(url: &str, name: &str) -> Result<Connection, Error> {
    if !url.contains("://") {
        return Err(Error::BadUrl {
            url: mask_url(url),
            message: "not an AMQP URL: write amqp://user:password@host:5672/vhost (or amqps://…)"
                .to_owned(),
        });
    }
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let (url_for_lapin, ca_file) = take_param(url, CA_CERT_FILE_PARAM);
    let tls = tls_config(url, ca_file.as_deref()).map_err(|message| Error::BadUrl {
        url: mask_url(url),
        message,
    })?;
    let runtime = lapin::runtime::default_runtime().map_err(|source| Error::Connect {
        url: mask_url(url),
        source,
        hint: String::new(),
    })?;
    Connection::connect_with_config(&url_for_lapin, props, tls, runtime)
        .await
        .map_err(|source| {
            let hint = connect_hint(url, ca_file.as_deref(), &source.to_string());
            Error::Connect {
                url: mask_url(url),
                source,
                hint,
            }
        })
}

fn tls_config(url: &str, ca_file: Option<&str>) -> Result<OwnedTLSConfig, String> {
    let Some(path) = ca_file else {
        return Ok(OwnedTLSConfig::default());
    };
    if !url.starts_with("amqps://") {
        return Err(format!(
            "{CA_CERT_FILE_PARAM}={path} is set but the URL is not amqps://: use amqps:// (the broker's TLS port, usually 5671) or drop {CA_CERT_FILE_PARAM}"
        ));
    }
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the CA file {CA_CERT_FILE_PARAM}={path}: {e}"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "the CA file {CA_CERT_FILE_PARAM}={path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(OwnedTLSConfig {
        identity: None,
        cert_chain: Some(pem),
    })
}

fn connect_hint(url: &str, ca_file: Option<&str>, error: &str) -> String {
    let lower = error.to_ascii_lowercase();
    if lower.contains("native certificates") {
        " (no system CA certificates to start from: install the ca-certificates package; a cacertfile \
         is trusted in addition to them)"
            .to_owned()
    } else if url.starts_with("amqps://")
        && (lower.contains("certificate") || lower.contains("issuer"))
    {
        let trusted = match ca_file {
            Some(path) => format!("the CA in {CA_CERT_FILE_PARAM}={path}"),
            None => format!(
                "the system's certificate authorities (name your own CA with ?{CA_CERT_FILE_PARAM}=/path/ca.pem)"
            ),
        };
        format!(
            " (the broker's TLS certificate is not trusted: it must be signed by {trusted} and name the host in the URL)"
        )
    } else if url.starts_with("amqp://") && lower.contains("frame") {
        " (is this the broker's TLS port? use amqps:// for it)".to_owned()
    } else {
        String::new()
    }
}

/// `url` without the query parameter `name`, and that parameter's value (percent-decoded).
fn take_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => {
                value = Some(percent_decode(v));
                false
            }
            _ => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, value)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL with its password replaced by `***`, for logs and messages. The password ends at the last
/// `@`, so one holding `/`, `?` or `#` unencoded is masked too; a string that is not a URL but holds
/// an `@` is not shown at all.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') {
            "(a broker URL that does not parse; not shown because it may hold a password)"
                .to_owned()
        } else {
            url.to_owned()
        };
    };
    match rest.rfind('@') {
        Some(at) => {
            let (userinfo, host) = rest.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***{host}"),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{mask_url, take_param};

    #[test]
    fn the_ca_file_parameter_is_taken_out_of_the_url() {
        assert_eq!(
            take_param(
                "amqps://u:p@h:5671/%2f?heartbeat=5&cacertfile=%2Fetc%2Fca.pem",
                "cacertfile"
            ),
            (
                "amqps://u:p@h:5671/%2f?heartbeat=5".to_owned(),
                Some("/etc/ca.pem".to_owned())
            )
        );
        assert_eq!(
            take_param("amqps://h/v?cacertfile=/ca.pem", "cacertfile"),
            ("amqps://h/v".to_owned(), Some("/ca.pem".to_owned()))
        );
        assert_eq!(
            take_param("amqp://h/v?heartbeat=5", "cacertfile"),
            ("amqp://h/v?heartbeat=5".to_owned(), None)
        );
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_url("amqp://rafty:s3cr@t@broker:5672/%2f?heartbeat=15"),
            "amqp://rafty:***@broker:5672/%2f?heartbeat=15"
        );
        assert_eq!(mask_url("amqp://broker:5672"), "amqp://broker:5672");
        assert_eq!(mask_url("amqps://u@h/v"), "amqps://u@h/v");
        assert_eq!(
            mask_url("amqp://u:ab/c?d#e@h:5672/%2f"),
            "amqp://u:***@h:5672/%2f"
        );
        assert!(!mask_url("amqp:u:secret@host").contains("secret"));
    }
}
