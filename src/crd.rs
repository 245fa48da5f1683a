//! The Kubernetes CustomResourceDefinition of the Hosting kind, generated from
//! Rust types so `crds/hosting.yaml` cannot drift from the API (a test fails
//! when it does; `hostd crds > crds/hosting.yaml` regenerates it).

use schemars::gen::SchemaSettings;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::domain::{Condition, Phase};

/// Desired state of a Hosting: the API's `spec` and the CRD's, one type.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct SpecView {
    // schemars takes literals only: a test checks them against `limits`.
    /// Virtual CPUs.
    #[schemars(range(min = 1, max = 16))]
    #[schema(minimum = 1, maximum = 16)]
    pub vcpus: i32,
    /// Memory in MiB.
    #[schemars(range(min = 256, max = 65536))]
    #[schema(minimum = 256, maximum = 65536)]
    pub memory_mib: i32,
    /// Disk size in GiB; fixed after creation.
    #[schemars(range(min = 1, max = 1024))]
    #[schema(minimum = 1, maximum = 1024)]
    pub disk_gib: i32,
    /// Image name from the image catalogue, e.g. `debian-12`.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$"))]
    pub image: String,
    /// OpenSSH public keys for the `ubuntu` user.
    pub ssh_public_keys: Vec<String>,
    /// Whether the VM should run.
    pub running: bool,
    /// Whether `Strict-Transport-Security` is sent on the hosting's own
    /// names over HTTPS (opt-in).
    #[serde(default)]
    pub hsts: bool,
}

impl From<&crate::domain::HostingSpec> for SpecView {
    fn from(s: &crate::domain::HostingSpec) -> Self {
        SpecView {
            vcpus: s.vcpus.as_i32(),
            memory_mib: s.memory_mib.as_i32(),
            disk_gib: s.disk_gib.as_i32(),
            image: s.image.as_str().into(),
            ssh_public_keys: s
                .ssh_public_keys
                .iter()
                .map(|k| k.as_str().into())
                .collect(),
            running: s.running,
            hsts: s.hsts,
        }
    }
}

/// Observed state of a Hosting: the API's `status` and the CRD's, one type.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct StatusView {
    pub phase: Phase,
    pub conditions: Vec<Condition>,
    pub observed_generation: i64,
    pub ssh_port: Option<u16>,
    pub http_port: Option<u16>,
    pub message: Option<String>,
    /// The node the hosting is placed on (absent until it is placed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

fn schema_of<T: JsonSchema>() -> Value {
    let settings = SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let gen = settings.into_generator();
    let mut v = serde_json::to_value(gen.into_root_schema_for::<T>()).expect("schema serializes");
    clean(&mut v);
    v
}

/// Makes a schemars schema structural for Kubernetes: no titles, no
/// definitions, formats Kubernetes knows.
fn clean(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("title");
            m.remove("definitions");
            m.remove("$schema");
            if let Some(Value::String(f)) = m.get("format") {
                if matches!(f.as_str(), "uint16" | "uint" | "uint32" | "uint64") {
                    m.insert("format".into(), json!("int32"));
                    m.insert("minimum".into(), json!(0));
                }
            }
            if m.get("format") == Some(&json!("int32"))
                && m.get("type") == Some(&json!("integer"))
                && m.get("maximum").is_none()
                && m.get("minimum") == Some(&json!(0))
            {
                m.insert("maximum".into(), json!(65535));
            }
            for (_, c) in m.iter_mut() {
                clean(c);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(clean),
        _ => {}
    }
}

/// The CRD as a JSON value.
pub fn hosting_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "hostings.hostd.dev"},
        "spec": {
            "group": "hostd.dev",
            "names": {"kind": "Hosting", "listKind": "HostingList", "plural": "hostings", "singular": "hosting", "shortNames": ["hst"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "SSH", "type": "integer", "jsonPath": ".status.ssh_port"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A user's web hosting: one VM running nginx, reachable at /<user id>/ and over SSH.",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": schema_of::<SpecView>(),
                        "status": schema_of::<StatusView>(),
                    },
                    "required": ["spec"]
                }}
            }]
        }
    })
}

/// The CRD as YAML (the content of `crds/hosting.yaml`).
pub fn hosting_crd_yaml() -> String {
    let body = serde_norway::to_string(&hosting_crd()).expect("CRD serializes");
    format!("# Generated by `hostd crds` from the Rust types; do not edit by hand.\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::limits;

    #[test]
    fn schema_ranges_are_the_validation_limits() {
        let s = schema_of::<SpecView>();
        for (field, (min, max)) in [
            ("vcpus", limits::VCPUS),
            ("memory_mib", limits::MEMORY_MIB),
            ("disk_gib", limits::DISK_GIB),
        ] {
            let p = &s["properties"][field];
            assert_eq!(p["minimum"].as_f64(), Some(min as f64), "{field}");
            assert_eq!(p["maximum"].as_f64(), Some(max as f64), "{field}");
        }
    }
}
