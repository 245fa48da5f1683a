//! A real S3 server for tests: `moto_server` (moto[server] from PyPI, in
//! memory; installed into the test venv by scripts/test-tools.sh), on a
//! free loopback port. Stopping it is the store going away; starting it
//! again on the same port is the store coming back (empty: moto keeps
//! nothing, so the bucket is made again).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hostd::config::OffsitePolicy;

pub struct Moto {
    pub port: u16,
    child: Option<Child>,
}

fn venv() -> String {
    std::env::var("HOSTD_TEST_VENV").unwrap_or_else(|_| "/var/cache/hostd-test/venv".into())
}

impl Moto {
    /// Starts moto on a free port with bucket `bucket`.
    pub async fn start(bucket: &str) -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut m = Moto { port, child: None };
        m.up(bucket).await;
        m
    }

    /// (Re)starts the server on its port and makes the bucket.
    pub async fn up(&mut self, bucket: &str) {
        let bin = format!("{}/bin/moto_server", venv());
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e} (scripts/test-tools.sh installs moto)"));
        self.child = Some(child);
        let c = reqwest::Client::new();
        for _ in 0..200 {
            if c.get(self.url("")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // moto accepts unsigned requests: the bucket is made with a plain PUT.
        let r = c.put(self.url(bucket)).send().await.expect("moto answers");
        assert!(
            r.status().is_success(),
            "creating the bucket: {}",
            r.status()
        );
    }

    /// Stops the server (the store goes away).
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// The settings of an off-host store in `bucket/prefix` here.
    pub fn policy(&self, bucket: &str, prefix: &str, key_file: &std::path::Path) -> OffsitePolicy {
        OffsitePolicy {
            endpoint: format!("http://127.0.0.1:{}", self.port),
            bucket: bucket.into(),
            prefix: prefix.into(),
            region: "us-east-1".into(),
            access_key: "testing".into(),
            secret_key: "testing".into(),
            key_file: key_file.to_path_buf(),
            local_keep: 0,
        }
    }

    /// Every key in `bucket` (unsigned ListObjectsV2).
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let body = reqwest::get(self.url(&format!("{bucket}?list-type=2")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_string())
            .collect()
    }

    /// Multipart uploads begun and neither completed nor aborted.
    pub async fn open_uploads(&self, bucket: &str) -> usize {
        let body = reqwest::get(self.url(&format!("{bucket}?uploads")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.matches("<UploadId>").count()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.down();
    }
}
