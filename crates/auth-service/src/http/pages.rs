//! The pages a person sees: sign-in, consent, sign-out, and the errors that cannot be sent
//! back to a client. No external asset, no script; one stylesheet whose hash is the only style
//! the Content-Security-Policy allows, and forms that may post only here (and be redirected
//! only to the one address the request registered).

use std::collections::HashMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

const CSS: &str = "\
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#57606a;--bg:#f6f8fa;--card:#fff;\
--line:#d0d7de;--accent:#0b5fff;--error:#b3261e}\
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9da7b3;--bg:#0d1117;\
--card:#161b22;--line:#30363d;--accent:#4c8dff;--error:#ff8a80}}\
*{box-sizing:border-box}\
body{margin:0;min-height:100vh;display:grid;place-items:center;background:var(--bg);\
color:var(--fg);font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif}\
main{width:min(26rem,100% - 2rem);background:var(--card);border:1px solid var(--line);\
border-radius:12px;padding:2rem;margin:2rem 0}\
.brand{margin:0 0 1rem;font-size:.85rem;letter-spacing:.08em;text-transform:uppercase;\
color:var(--muted)}\
h1{margin:0 0 .5rem;font-size:1.5rem}\
p{margin:.5rem 0}\
.muted{color:var(--muted);font-size:.9rem}\
ul{padding-left:1.2rem;margin:.5rem 0 1rem}\
code{font-size:.9em}\
label{display:block;margin:1rem 0 .25rem;font-weight:600}\
input[type=text],input[type=password]{width:100%;padding:.6rem .7rem;font:inherit;\
color:inherit;background:transparent;border:1px solid var(--line);border-radius:8px}\
input:focus-visible,button:focus-visible{outline:3px solid var(--accent);outline-offset:2px}\
.actions{display:flex;gap:.75rem;margin-top:1.5rem}\
button{flex:1;padding:.65rem 1rem;font:inherit;font-weight:600;border-radius:8px;\
border:1px solid var(--accent);background:var(--accent);color:#fff;cursor:pointer}\
button.secondary{background:transparent;color:var(--accent)}\
.error{margin:1rem 0;padding:.75rem;border-radius:8px;border:1px solid var(--error);\
color:var(--error)}";

/// The Content-Security-Policy of a page whose forms may end in a redirect to `redirect_to`
/// (a registered redirect URI): browsers apply `form-action` to where a form's answer
/// redirects, so that one origin is allowed besides ours.
fn content_security_policy(redirect_to: Option<&str>) -> String {
    // The stylesheet is a constant: its hash is computed once, not per page.
    static STYLE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| STANDARD.encode(Sha256::digest(CSS.as_bytes())));
    let style = STYLE.as_str();
    let extra = redirect_to
        .and_then(|uri| url::Url::parse(uri).ok())
        .map(|url| format!(" {}", url.origin().ascii_serialization()))
        .unwrap_or_default();
    format!(
        "default-src 'none'; style-src 'sha256-{style}'; form-action 'self'{extra}; \
         frame-ancestors 'none'; base-uri 'none'"
    )
}

/// A page: no caching, no framing (clickjacking), the strict policy above.
pub(super) fn respond(status: StatusCode, page: &Page) -> Response {
    let csp = content_security_policy(page.redirect_to.as_deref());
    let mut response = (status, page.html.clone()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under it a browser sends `Origin: null` with our own forms, and the
    // same-origin check could no longer tell them from a forged one. `same-origin` sends no
    // referrer to any other site (the redirect to the client carries none).
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(csp) = HeaderValue::try_from(csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

/// A rendered page and the one outside origin its forms may lead to.
pub(super) struct Page {
    html: String,
    redirect_to: Option<String>,
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Zero-Trust Mesh</title><style>{CSS}</style></head>\n\
         <body><main aria-labelledby=\"title\"><p class=\"brand\">Zero-Trust Mesh</p>\n\
         <h1 id=\"title\">{title}</h1>\n{body}</main></body></html>\n",
        title = escape(title),
    )
}

/// Hidden fields carrying `names` from `params`, and the CSRF token.
fn hidden(params: &HashMap<String, String>, names: &[&str], csrf: &str) -> String {
    let mut fields: String = names
        .iter()
        .filter_map(|name| params.get(*name).map(|value| (name, value)))
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">\n",
                escape(value)
            )
        })
        .collect();
    fields.push_str(&format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">\n",
        escape(csrf)
    ));
    fields
}

fn error_block(error: Option<&str>) -> String {
    error
        .map(|e| {
            format!(
                "<p class=\"error\" role=\"alert\" id=\"error\">{}</p>\n",
                escape(e)
            )
        })
        .unwrap_or_default()
}

/// What a client asks for, in words.
pub(super) struct Asking<'a> {
    pub client: &'a str,
    pub audiences: &'a [String],
    pub scopes: &'a [String],
}

fn asking_list(asking: &Asking<'_>) -> String {
    let mut items = String::new();
    for scope in asking.scopes {
        let text = match scope.as_str() {
            "openid" => "know that it is you who signs in".to_owned(),
            "profile" => "see your username".to_owned(),
            other => format!("use <code>{}</code> for you", escape(other)),
        };
        items.push_str(&format!("<li>{text}</li>"));
    }
    let services = asking
        .audiences
        .iter()
        .map(|a| format!("<b>{}</b>", escape(a)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "<p class=\"muted\">for {services}</p><ul>{items}</ul>",
        items = if items.is_empty() {
            "<li>sign you in</li>".to_owned()
        } else {
            items
        }
    )
}

/// The sign-in form.
pub(super) fn login(
    asking: &Asking<'_>,
    params: &HashMap<String, String>,
    carried: &[&str],
    csrf: &str,
    error: Option<&str>,
    action: &str,
    redirect_to: &str,
) -> Page {
    let described = if error.is_some() {
        " aria-describedby=\"error\" aria-invalid=\"true\""
    } else {
        ""
    };
    // The name typed before (the form shown again) or the client's `login_hint` is kept, and
    // the focus goes to the field still to fill in.
    let known = params
        .get("username")
        .or_else(|| params.get("login_hint"))
        .map(|name| escape(name));
    let (user_focus, password_focus) = if known.is_some() {
        ("", " autofocus")
    } else {
        (" autofocus", "")
    };
    let value = known
        .map(|name| format!(" value=\"{name}\""))
        .unwrap_or_default();
    let body = format!(
        "<p>to continue to <b>{client}</b>, which asks to:</p>\n{list}{error}\
         <form method=\"post\" action=\"{action}\">\n{hidden}\
         <label for=\"username\">Username</label>\
         <input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" \
         autocapitalize=\"none\" spellcheck=\"false\" required{value}{user_focus}{described}>\n\
         <label for=\"password\">Password</label>\
         <input type=\"password\" id=\"password\" name=\"password\" \
         autocomplete=\"current-password\" required{password_focus}{described}>\n\
         <div class=\"actions\"><button type=\"submit\">Sign in</button></div>\n</form>\n",
        client = escape(asking.client),
        list = asking_list(asking),
        error = error_block(error),
        hidden = hidden(params, carried, csrf),
    );
    Page {
        html: document("Sign in", &body),
        redirect_to: Some(redirect_to.to_owned()),
    }
}

/// The consent form: allow or deny what the client asks for.
pub(super) fn consent(
    asking: &Asking<'_>,
    username: &str,
    params: &HashMap<String, String>,
    carried: &[&str],
    csrf: &str,
    action: &str,
    redirect_to: &str,
) -> Page {
    let body = format!(
        "<p>Signed in as <b>{user}</b>. <b>{client}</b> asks to:</p>\n{list}\
         <p class=\"muted\">Your answer is remembered for this application until it asks for \
         more.</p>\n<form method=\"post\" action=\"{action}\">\n{hidden}\
         <div class=\"actions\">\
         <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\" class=\"secondary\">Deny</button>\
         </div>\n</form>\n",
        user = escape(username),
        client = escape(asking.client),
        list = asking_list(asking),
        hidden = hidden(params, carried, csrf),
    );
    Page {
        html: document("Allow access?", &body),
        redirect_to: Some(redirect_to.to_owned()),
    }
}

/// The question before a sign-out nobody vouched for (no `id_token_hint`).
pub(super) fn confirm_logout(
    username: &str,
    params: &HashMap<String, String>,
    carried: &[&str],
    csrf: &str,
    action: &str,
    redirect_to: Option<&str>,
) -> Page {
    let body = format!(
        "<p>You are signed in as <b>{user}</b>. Signing out ends your session here and signs \
         you out of every application you signed in to with it.</p>\n\
         <form method=\"post\" action=\"{action}\">\n{hidden}\
         <input type=\"hidden\" name=\"confirm\" value=\"yes\">\
         <div class=\"actions\"><button type=\"submit\">Sign out</button></div>\n</form>\n",
        user = escape(username),
        hidden = hidden(params, carried, csrf),
    );
    Page {
        html: document("Sign out?", &body),
        redirect_to: redirect_to.map(str::to_owned),
    }
}

/// After a sign-out, when there is nowhere to send the person back to.
pub(super) fn signed_out(applications: usize) -> Page {
    let detail = match applications {
        0 => "No application was signed in with this session.".to_owned(),
        1 => "The one application you signed in to with it is signed out too.".to_owned(),
        n => format!("The {n} applications you signed in to with it are signed out too."),
    };
    let body = format!(
        "<p>Your session has ended. {detail}</p>\n\
         <p class=\"muted\">You can close this window.</p>\n"
    );
    Page {
        html: document("You are signed out", &body),
        redirect_to: None,
    }
}

/// An error that cannot go back to the client (no trustworthy redirect).
pub(super) fn error(message: &str) -> Page {
    let body = format!(
        "<p class=\"error\" role=\"alert\">{}</p>\n",
        escape(message)
    );
    Page {
        html: document("Cannot continue", &body),
        redirect_to: None,
    }
}

/// HTML-escapes `text` for element content and quoted attributes.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_exactly_our_stylesheet_and_the_registered_redirect_origin() {
        let csp = content_security_policy(Some("http://127.0.0.1:8976/callback"));
        let style = STANDARD.encode(Sha256::digest(CSS.as_bytes()));
        assert!(
            csp.contains(&format!("style-src 'sha256-{style}'")),
            "{csp}"
        );
        assert!(
            csp.contains("form-action 'self' http://127.0.0.1:8976;"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe"));
        assert!(content_security_policy(None).contains("form-action 'self';"));
    }

    #[test]
    fn what_a_client_sends_is_escaped_into_the_page() {
        let params = HashMap::from([("state".to_owned(), "\"><script>x</script>".to_owned())]);
        let page = login(
            &Asking {
                client: "c<i>",
                audiences: &["orders".to_owned()],
                scopes: &[],
            },
            &params,
            &["state"],
            "t",
            Some("<b>"),
            "/oauth2/authorize",
            "http://127.0.0.1:1/cb",
        );
        assert!(!page.html.contains("<script>"));
        assert!(!page.html.contains("c<i>"));
        assert!(page.html.contains("&quot;&gt;&lt;script&gt;"));
    }
}
