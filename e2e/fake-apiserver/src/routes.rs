//! HTTP routing: map Kubernetes API paths onto discovery documents and verbs.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::{self, Request, Shared, lock};
use crate::discovery;
use crate::error::{ApiError, ApiResult};
use crate::openapi;
use crate::table;
use crate::watch;

#[derive(Clone)]
pub struct AppState {
    pub shared: Shared,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub addr: String,
}

pub fn router(state: AppState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

pub fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    json_response(StatusCode::OK, &body)
}

async fn handle(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let result = route(&st, &method, &uri, &headers, body);
    match result {
        Ok(resp) => {
            tracing::debug!(%method, %path, status = %resp.status(), "request");
            resp
        }
        Err(e) => {
            tracing::debug!(%method, %path, code = e.code, message = %e.message, "request failed");
            e.into_response()
        }
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn route(
    st: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let path = uri.path();
    if let Some(code) = lock(&st.shared).take_failure(method.as_str(), path) {
        return Err(ApiError::new(
            code,
            "InternalError",
            "refused by a test's failure rule",
        ));
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let not_found = || ApiError::no_route(path);
    let read_only = |resp: Value| -> ApiResult<Response> {
        if method == Method::GET {
            Ok(ok(resp))
        } else {
            Err(ApiError::method_not_allowed(format!(
                "{method} is not allowed on {path}"
            )))
        }
    };
    match segs.as_slice() {
        [] => read_only(json!({"paths": ["/api", "/api/v1", "/apis", "/version", "/healthz"]})),
        ["version"] => read_only(discovery::version()),
        ["healthz" | "livez" | "readyz", ..] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => read_only(discovery::core_versions(&st.addr)),
        ["apis"] => read_only(discovery::group_list(&lock(&st.shared))),
        ["api", "v1"] => {
            let list =
                discovery::resource_list(&lock(&st.shared), "", "v1").ok_or_else(not_found)?;
            read_only(list)
        }
        ["apis", group] => {
            let g = discovery::group(&lock(&st.shared), group).ok_or_else(not_found)?;
            read_only(g)
        }
        ["apis", group, version] => {
            let list = discovery::resource_list(&lock(&st.shared), group, version)
                .ok_or_else(not_found)?;
            read_only(list)
        }
        ["openapi", "v3"] => read_only(openapi::root(&lock(&st.shared))),
        ["openapi", "v3", "api", version] => {
            let doc = openapi::document(&lock(&st.shared), "", version).ok_or_else(not_found)?;
            read_only(doc)
        }
        ["openapi", "v3", "apis", group, version] => {
            let doc = openapi::document(&lock(&st.shared), group, version).ok_or_else(not_found)?;
            read_only(doc)
        }
        ["api", "v1", rest @ ..] => resource(st, method, uri, headers, body, "", "v1", rest),
        ["apis", group, version, rest @ ..] => {
            resource(st, method, uri, headers, body, group, version, rest)
        }
        _ => Err(not_found()),
    }
}

#[allow(clippy::too_many_arguments)]
fn resource(
    st: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    group: &str,
    version: &str,
    rest: &[&str],
) -> ApiResult<Response> {
    let not_found = || ApiError::no_route(uri.path());
    let (namespace, plural, name, sub, extra) = {
        let store = lock(&st.shared);
        let namespaced_path = rest.len() >= 3
            && rest[0] == "namespaces"
            && store.find(group, version, rest[2]).is_some();
        if namespaced_path {
            (
                Some(rest[1].to_string()),
                rest[2],
                rest.get(3),
                rest.get(4),
                rest.len() > 5,
            )
        } else {
            (None, rest[0], rest.get(1), rest.get(2), rest.len() > 3)
        }
    };
    if extra {
        return Err(not_found());
    }
    let info = lock(&st.shared)
        .find(group, version, plural)
        .ok_or_else(not_found)?;
    if namespace.is_some() && !info.namespaced {
        return Err(not_found());
    }
    if namespace.is_none() && info.namespaced && name.is_some() {
        return Err(not_found());
    }
    let query: HashMap<String, String> = Query::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let req = Request {
        info,
        namespace,
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
        query,
        content_type: header_str(headers, header::CONTENT_TYPE),
        user_agent: header_str(headers, header::USER_AGENT),
        body: body.to_vec(),
    };
    let binary = ["protobuf", "cbor"]
        .iter()
        .any(|b| req.content_type.contains(b));
    if binary && !req.body.is_empty() {
        return Err(ApiError::unsupported_media_type(&req.content_type));
    }
    let wants_table = header_str(headers, header::ACCEPT).contains("as=Table");
    let is_watch = req
        .query
        .get("watch")
        .is_some_and(|w| w == "true" || w == "1");
    match *method {
        Method::GET if req.name.is_none() && is_watch => {
            watch::watch(&st.shared, &req, st.shutdown.clone(), wants_table)
        }
        Method::GET if req.name.is_none() => {
            let list = api::list(&st.shared, &req)?;
            Ok(ok(if wants_table {
                table::render_list(&req.info, &list)
            } else {
                list
            }))
        }
        Method::GET => {
            let obj = api::get(&st.shared, &req)?;
            Ok(ok(if wants_table && req.sub.is_none() {
                table::render_one(&req.info, &obj)
            } else {
                obj
            }))
        }
        Method::POST => Ok(json_response(
            StatusCode::CREATED,
            &api::create(&st.shared, &req)?,
        )),
        Method::PUT => Ok(ok(api::replace(&st.shared, &req)?)),
        Method::PATCH => {
            let (obj, created) = api::patch(&st.shared, &req)?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &obj))
        }
        Method::DELETE if req.name.is_none() => Ok(ok(api::delete_collection(&st.shared, &req)?)),
        Method::DELETE => Ok(ok(api::delete(&st.shared, &req)?)),
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported"
        ))),
    }
}
