//! amoCRM's token endpoint on the wire: the refresh-token grant it is sent, the pair it
//! answers, and what its statuses mean (401 and 400 say the refresh token is revoked).

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::TokenSource;
use crate::amocrm::AmoError;

const TOKEN_ENDPOINT: &str = "/oauth2/access_token";

/// What amoCRM's token endpoint answers.
#[derive(Deserialize)]
pub(super) struct Granted {
    pub(super) access_token: String,
    pub(super) refresh_token: String,
    pub(super) expires_in: i64,
}

/// The token endpoint of the account at `base_url`, and the HTTP client that calls it.
pub(super) fn client(
    base_url: &Url,
    timeout: Duration,
) -> Result<(Url, reqwest::Client), reqwest::Error> {
    let mut endpoint = base_url.clone();
    endpoint.set_path(TOKEN_ENDPOINT);
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("amocrm-gateway/", env!("CARGO_PKG_VERSION")))
        .build()?;
    Ok((endpoint, http))
}

impl TokenSource {
    /// `POST /oauth2/access_token` with the refresh token.
    pub(super) async fn grant(&self, refresh: &SecretString) -> Result<Granted, AmoError> {
        let started = std::time::Instant::now();
        let body = serde_json::json!({
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret.expose_secret(),
            "grant_type": "refresh_token",
            "refresh_token": refresh.expose_secret(),
            "redirect_uri": self.config.redirect_uri,
        });
        let response = self
            .http
            .post(self.endpoint.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                let error = if e.is_timeout() {
                    AmoError::Timeout(started.elapsed())
                } else {
                    AmoError::Connect
                };
                self.metrics.upstream_request(
                    TOKEN_ENDPOINT,
                    error.transport_label(),
                    started.elapsed(),
                );
                error
            })?;
        let status = response.status();
        self.metrics
            .upstream_request(TOKEN_ENDPOINT, status.as_str(), started.elapsed());
        let text = response.text().await.map_err(|_| AmoError::Transport)?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST {
            let hint = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    v.get("hint")
                        .or_else(|| v.get("detail"))
                        .and_then(|h| h.as_str())
                        .map(|h| h.chars().take(200).collect::<String>())
                });
            tracing::error!(
                status = status.as_u16(),
                hint = hint.as_deref().unwrap_or_default(),
                "amoCRM refused the gateway's refresh token: the integration must be re-authorized"
            );
            return Err(self.revoked(hint));
        }
        if status.is_server_error() {
            return Err(AmoError::Server {
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(AmoError::UnexpectedStatus {
                status: status.as_u16(),
            });
        }
        serde_json::from_str::<Granted>(&text)
            .map_err(|e| AmoError::Decode(format!("the token endpoint's answer: {e}")))
    }
}
