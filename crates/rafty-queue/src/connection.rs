//! Connecting to the broker.

use lapin::{Connection, ConnectionProperties};

use crate::Error;

/// Open a connection named `name` (shown in the broker's management UI) to `url`.
pub async fn connect(url: &str, name: &str) -> Result<Connection, Error> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props)
        .await
        .map_err(|source| Error::Connect {
            url: mask_url(url),
            source,
        })
}

/// The URL with its password replaced by `***`, for logs and messages.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_url("amqp://rafty:s3cr@t@broker:5672/%2f?heartbeat=15"),
            "amqp://rafty:***@broker:5672/%2f?heartbeat=15"
        );
        assert_eq!(mask_url("amqp://broker:5672"), "amqp://broker:5672");
        assert_eq!(mask_url("amqps://u@h/v"), "amqps://u@h/v");
    }
}
