//! The test's own client of the server: any kind through discovery, server-side apply,
//! merge patches, deletes, waits, TokenRequest.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::header::{CONTENT_TYPE, WARNING};
use hyper::{Method, Request};
use kube::api::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;
use serde_json::{json, Value};

use super::MANAGER;

/// A client of the API server for the test's own reads and writes (any kind, by
/// `apiVersion` and `kind`, through discovery).
#[derive(Clone)]
pub struct Admin {
    client: kube::Client,
    resources: Arc<Mutex<Discovered>>,
}

/// Resources found so far, by (apiVersion, kind): the resource and whether it is namespaced.
type Discovered = HashMap<(String, String), (ApiResource, bool)>;

/// A response: status, body, and the `Warning` headers.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The body (JSON for the API).
    pub body: Value,
    /// `Warning` header values (admission and deprecation warnings).
    pub warnings: Vec<String>,
}

/// A request the API server refused.
#[derive(Debug)]
pub struct Refused {
    /// The HTTP status.
    pub status: u16,
    /// The Status object's message.
    pub message: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl Admin {
    /// A client from a kubeconfig's text.
    pub async fn connect(kubeconfig: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = kube::config::Kubeconfig::from_yaml(kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("client config");
        Self {
            client: kube::Client::try_from(config).expect("client"),
            resources: Arc::default(),
        }
    }

    /// The client itself.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// [`Admin::raw`] with `body` as the request's JSON (an apply patch's YAML is JSON too).
    pub async fn send_json(
        &self,
        method: Method,
        uri: &str,
        body: &Value,
        content_type: &str,
    ) -> Result<Reply, kube::Error> {
        let body = body.to_string().into_bytes();
        self.raw(method, uri, Some(body), content_type).await
    }

    /// Sends one request; `body` as `content_type`.
    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Result<Reply, kube::Error> {
        let mut request = Request::builder().method(method).uri(uri);
        if !content_type.is_empty() {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let request = request
            .body(kube::client::Body::from(body.unwrap_or_default()))
            .expect("request");
        let response = self.client.send(request).await?;
        let status = response.status().as_u16();
        let warnings = response
            .headers()
            .get_all(WARNING)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Reply {
            status,
            body,
            warnings,
        })
    }

    /// The resource of `kind` in `api_version`, and whether it is namespaced.
    pub async fn resource(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, bool), kube::Error> {
        let key = (api_version.to_owned(), kind.to_owned());
        if let Some(found) = self.resources.lock().unwrap().get(&key) {
            return Ok(found.clone());
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(&self.client, &gvk).await?;
        let found = (resource, caps.scope == Scope::Namespaced);
        self.resources.lock().unwrap().insert(key, found.clone());
        Ok(found)
    }

    /// The path of object `name` (or of the collection, for `""`).
    pub async fn path(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> String {
        let (resource, namespaced) = self
            .resource(api_version, kind)
            .await
            .unwrap_or_else(|e| panic!("discover {api_version} {kind}: {e}"));
        let base = if resource.group.is_empty() {
            format!("/api/{}", resource.version)
        } else {
            format!("/apis/{}/{}", resource.group, resource.version)
        };
        let ns = match (namespaced, namespace) {
            (true, Some(ns)) => format!("/namespaces/{ns}"),
            _ => String::new(),
        };
        let name = if name.is_empty() {
            String::new()
        } else {
            format!("/{name}")
        };
        format!("{base}{ns}/{}{name}", resource.plural)
    }

    async fn object_path(&self, object: &Value) -> String {
        let meta = &object["metadata"];
        self.path(
            object["apiVersion"].as_str().expect("apiVersion"),
            object["kind"].as_str().expect("kind"),
            meta["namespace"].as_str(),
            meta["name"].as_str().expect("metadata.name"),
        )
        .await
    }

    /// Server-side apply with strict field validation (a field the schema does not know is
    /// an error, not silently pruned); the stored object and any warnings, or the refusal.
    pub async fn try_apply(&self, object: &Value) -> Result<Reply, Refused> {
        self.try_apply_as(object, MANAGER).await
    }

    /// [`Admin::try_apply`] as field manager `manager` (which then owns the fields given).
    pub async fn try_apply_as(&self, object: &Value, manager: &str) -> Result<Reply, Refused> {
        let path = self.object_path(object).await;
        let uri = format!("{path}?fieldManager={manager}&force=true&fieldValidation=Strict");
        let reply = self
            .send_json(Method::PATCH, &uri, object, "application/apply-patch+yaml")
            .await
            .map_err(|e| Refused {
                status: 0,
                message: e.to_string(),
            })?;
        if (200..300).contains(&reply.status) {
            Ok(reply)
        } else {
            Err(Refused {
                status: reply.status,
                message: reply.body["message"]
                    .as_str()
                    .map_or_else(|| reply.body.to_string(), str::to_owned),
            })
        }
    }

    /// [`Admin::try_apply`] that must succeed; the stored object.
    pub async fn apply(&self, object: &Value) -> Value {
        match self.try_apply(object).await {
            Ok(reply) => reply.body,
            Err(refused) => panic!(
                "apply {} {}/{} refused: {refused}",
                object["kind"],
                object["metadata"]["namespace"].as_str().unwrap_or(""),
                object["metadata"]["name"]
            ),
        }
    }

    /// The object, or `None` if it does not exist.
    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.try_get(api_version, kind, namespace, name)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The object or `None` if it does not exist; `Err` if the server does not answer
    /// (yet) or refuses.
    pub async fn try_get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, String> {
        // Discovery first, so that a server not answering yet is an Err here, not a panic
        // in `path`.
        self.resource(api_version, kind)
            .await
            .map_err(|e| format!("discover {api_version} {kind}: {e}"))?;
        let path = self.path(api_version, kind, namespace, name).await;
        let reply = self
            .raw(Method::GET, &path, None, "")
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        match reply.status {
            200 => Ok(Some(reply.body)),
            404 => Ok(None),
            status => Err(format!("GET {path}: {status} {}", reply.body)),
        }
    }

    /// A JSON merge patch with strict field validation; the stored object.
    pub async fn merge_patch(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Value {
        let path = self.path(api_version, kind, namespace, name).await;
        let reply = self
            .send_json(
                Method::PATCH,
                &format!("{path}?fieldValidation=Strict"),
                patch,
                "application/merge-patch+json",
            )
            .await
            .unwrap_or_else(|e| panic!("PATCH {path}: {e}"));
        assert_eq!(reply.status, 200, "PATCH {path} {patch}: {}", reply.body);
        reply.body
    }

    /// Deletes the object (a finalizer may keep it, with `deletionTimestamp` set); true if
    /// it existed.
    pub async fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let path = self.path(api_version, kind, namespace, name).await;
        let reply = self
            .raw(Method::DELETE, &path, None, "")
            .await
            .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
        match reply.status {
            200 | 202 => true,
            404 => false,
            status => panic!("DELETE {path}: {status} {}", reply.body),
        }
    }

    /// Waits until the object exists and `check` holds; the object.
    pub async fn wait_for(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let what = format!("{kind} {name} as expected");
        crate::common::eventually(within, &what, || async {
            let object = self.get(api_version, kind, namespace, name).await?;
            check(&object).then_some(object)
        })
        .await
    }

    /// Waits until the object no longer exists.
    pub async fn wait_for_gone(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        within: Duration,
    ) {
        let what = format!("{kind} {name} gone");
        crate::common::eventually(within, &what, || async {
            match self.get(api_version, kind, namespace, name).await {
                Some(_) => None,
                None => Some(()),
            }
        })
        .await
    }

    /// A token for ServiceAccount `namespace/name`, from the TokenRequest API.
    pub async fn token(&self, namespace: &str, name: &str) -> String {
        let uri = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token");
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600}
        });
        let reply = self
            .send_json(Method::POST, &uri, &request, "application/json")
            .await
            .unwrap_or_else(|e| panic!("POST {uri}: {e}"));
        assert_eq!(reply.status, 201, "TokenRequest: {}", reply.body);
        reply.body["status"]["token"]
            .as_str()
            .expect("status.token")
            .to_owned()
    }
}
