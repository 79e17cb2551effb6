//! Operating nerite as a user would: `nerite run` as separate processes (for leader
//! election), scraping `/metrics`, and reading the Prometheus text format.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free port on 127.0.0.1 (bound and released; the caller binds it again at once).
pub fn free_local_addr() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr().map_err(|e| e.to_string())
}

/// GET a URL (blocking; call it off the async runtime): status and body.
pub fn http_get(url: &str) -> Result<(u16, String), String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(url)
        .send()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().map_err(|e| format!("GET {url}: {e}"))?;
    Ok((status, body))
}

/// One sample of the Prometheus/OpenMetrics text format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parse the samples of a text exposition (comments skipped). Label values must not contain
/// `,` or `"` (nerite's never do).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.trim().parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}')?;
                    let labels = inner
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .filter_map(|kv| {
                            let (k, v) = kv.split_once('=')?;
                            Some((k.to_string(), v.trim_matches('"').to_string()))
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            Some(Sample {
                name,
                labels,
                value,
            })
        })
        .collect()
}

/// The value of the sample with this name whose labels include all of `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// `nerite run` as a child process, killed when dropped.
pub struct OperatorProcess {
    pub identity: String,
    pub metrics_addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

impl OperatorProcess {
    /// Start `bin run --kubeconfig KUBECONFIG --metrics-addr ADDR ARGS...` with
    /// `POD_NAME=identity`; output goes to `dir/<identity>.log`.
    pub fn start(
        bin: &Path,
        kubeconfig: &Path,
        identity: &str,
        args: &[&str],
        dir: &Path,
    ) -> Result<OperatorProcess, String> {
        let metrics_addr = free_local_addr()?;
        let log = dir.join(format!("{identity}.log"));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            .args(args)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        Ok(OperatorProcess {
            identity: identity.to_string(),
            metrics_addr,
            child: Some(child),
            log,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.metrics_addr)
    }

    /// Scrape `/metrics` (blocking).
    pub fn scrape(&self) -> Result<Vec<Sample>, String> {
        let (status, body) = http_get(&self.url("/metrics"))?;
        if status != 200 {
            return Err(format!("{}: /metrics answered {status}", self.identity));
        }
        Ok(parse_metrics(&body))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the process gets no chance to release anything.
    pub fn kill(&mut self) -> Result<(), String> {
        if let Some(mut child) = self.child.take() {
            child.kill().map_err(|e| e.to_string())?;
            child.wait().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit. Returns the exit status code.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>, String> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| format!("kill -TERM {pid}: {e}"))?;
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status.code());
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not exit within {timeout:?} of SIGTERM",
                    self.identity
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the process output, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let text = "# HELP nerite_leader x\n# TYPE nerite_leader gauge\nnerite_leader 1\n\
                    nerite_scale_actions_total{namespace=\"shop\",name=\"orders\",direction=\"up\"} 2\n# EOF\n";
        let s = parse_metrics(text);
        assert_eq!(metric(&s, "nerite_leader", &[]), Some(1.0));
        assert_eq!(
            metric(
                &s,
                "nerite_scale_actions_total",
                &[("name", "orders"), ("direction", "up")]
            ),
            Some(2.0)
        );
        assert_eq!(
            metric(&s, "nerite_scale_actions_total", &[("direction", "down")]),
            None
        );
    }
}
