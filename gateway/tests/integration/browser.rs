//! The dashboard in a real headless Chromium, driven over WebDriver (chromedriver): log in, see the
//! panels filled, ask what a user gets, and keep screenshots under `target/dashboard-screenshots/`.
//!
//! Skipped (with the reason printed) when `chromium` or `chromedriver` is not installed, unless
//! `SYNCGATE_REQUIRE_BROWSER=1` (CI sets it where it installs them), which turns the skip into a failure.

use std::collections::HashSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::dashboard::{ADMIN_TOKEN, dashboard_config, golden_database};
use crate::replication::harness::free_port;
use crate::sync_api::Api;

/// The W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// A chromedriver process, killed when dropped.
struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(program: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let started = Instant::now();
        loop {
            if let Ok(response) = driver.http.get(format!("{}/status", driver.base)).send().await
                && let Ok(body) = response.bytes().await
                && serde_json::from_slice::<Value>(&body).is_ok_and(|s| s["value"]["ready"] == true)
            {
                return driver;
            }
            assert!(started.elapsed() < WAIT, "chromedriver not ready within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("WebDriver request");
        let status = response.status();
        let body: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON");
        assert!(status.is_success(), "WebDriver {path}: {status} {body}");
        body["value"].clone()
    }
}

/// One browser session.
struct Browser<'d> {
    driver: &'d Driver,
    session: String,
}

impl<'d> Browser<'d> {
    async fn open(driver: &'d Driver, chromium: &Path, profile: &Path) -> Browser<'d> {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        // A fresh profile: nothing cached, nothing that phones home.
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args},
        }}});
        let value = driver
            .call(reqwest::Method::POST, "/session", Some(capabilities))
            .await;
        Browser {
            driver,
            session: value["sessionId"].as_str().expect("session id").to_owned(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn elements(&self, css: &str) -> Vec<String> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_array()
            .expect("elements")
            .iter()
            .map(|e| {
                e[ELEMENT_KEY]
                    .as_str()
                    .unwrap_or_else(|| panic!("an element reference: {e}"))
                    .to_owned()
            })
            .collect()
    }

    async fn element(&self, css: &str) -> String {
        let mut found = self.elements(css).await;
        assert_eq!(found.len(), 1, "one element for {css}");
        found.remove(0)
    }

    async fn text(&self, css: &str) -> String {
        let element = self.element(css).await;
        let text = self
            .call(reqwest::Method::GET, &format!("/element/{element}/text"), None)
            .await;
        text.as_str().unwrap_or_default().to_owned()
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Polls the text of `css` until `accept` holds.
    async fn wait_for_text(&self, css: &str, accept: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            if !self.elements(css).await.is_empty() {
                let text = self.text(css).await;
                if accept(&text) {
                    return text;
                }
                assert!(started.elapsed() < WAIT, "{css} shows {text:?}");
            }
            assert!(started.elapsed() < WAIT, "{css} did not appear within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) -> (PathBuf, Png) {
        let data = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64 PNG"))
            .expect("base64");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &bytes).expect("write screenshot");
        (path, Png::decode(&bytes))
    }

    async fn close(self) {
        self.driver
            .call(
                reqwest::Method::DELETE,
                &format!("/session/{}", self.session),
                None,
            )
            .await;
    }
}

/// An 8-bit RGB or RGBA PNG decoded far enough to judge it: size and distinct colours.
#[derive(Debug)]
struct Png {
    width: u32,
    height: u32,
    colors: usize,
}

impl Png {
    fn decode(bytes: &[u8]) -> Png {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        let (mut at, mut header, mut compressed) = (8, None, Vec::new());
        while at + 8 <= bytes.len() {
            let length = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            let kind = &bytes[at + 4..at + 8];
            let data = &bytes[at + 8..at + 8 + length];
            match kind {
                b"IHDR" => header = Some(data.to_vec()),
                b"IDAT" => compressed.extend_from_slice(data),
                _ => {}
            }
            at += 12 + length;
        }
        let header = header.expect("IHDR");
        let width = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes"));
        let height = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
        let (depth, color_type, interlace) = (header[8], header[9], header[12]);
        assert_eq!((depth, interlace), (8, 0), "8-bit, not interlaced");
        let channels = match color_type {
            2 => 3,
            6 => 4,
            other => panic!("PNG colour type {other}"),
        };
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&compressed[..])
            .read_to_end(&mut raw)
            .expect("inflate");
        let stride = width as usize * channels;
        assert_eq!(raw.len(), (stride + 1) * height as usize, "image data size");
        let mut previous = vec![0u8; stride];
        let mut colors = HashSet::new();
        for line in raw.chunks(stride + 1) {
            let (filter, line) = (line[0], &line[1..]);
            let mut current = vec![0u8; stride];
            for i in 0..stride {
                let left = if i >= channels { current[i - channels] } else { 0 };
                let up = previous[i];
                let up_left = if i >= channels { previous[i - channels] } else { 0 };
                let predicted = match filter {
                    0 => 0,
                    1 => left,
                    2 => up,
                    3 => {
                        u8::try_from((u16::from(left) + u16::from(up)) / 2).expect("an average of two bytes")
                    }
                    4 => paeth(left, up, up_left),
                    other => panic!("PNG filter {other}"),
                };
                current[i] = line[i].wrapping_add(predicted);
            }
            for pixel in current.chunks(channels) {
                colors.insert([pixel[0], pixel[1], pixel[2]]);
            }
            previous = current;
        }
        Png {
            width,
            height,
            colors: colors.len(),
        }
    }
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = (
        (p - i16::from(a)).abs(),
        (p - i16::from(b)).abs(),
        (p - i16::from(c)).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

/// A screenshot worth keeping: the window's size and far more colours than a blank or one-colour page
/// (anti-aliased text and the panels' colours give hundreds).
fn assert_non_trivial(name: &str, path: &Path, png: &Png) {
    eprintln!(
        "{name}: {} x {} px, {} distinct colours ({})",
        png.width,
        png.height,
        png.colors,
        path.display()
    );
    assert!(png.width >= 800 && png.height >= 600, "{name}: {png:?}");
    assert!(png.colors > 64, "{name} looks blank: {png:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_in_a_headless_browser() {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
    let chromedriver = find_program(&["chromedriver"]);
    let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
        let reason = "chromium or chromedriver is not installed (apt-get install chromium chromium-driver)";
        assert!(
            std::env::var("SYNCGATE_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "SYNCGATE_REQUIRE_BROWSER=1 but {reason}"
        );
        eprintln!("skipped: {reason}");
        return;
    };

    let db = golden_database().await;
    // Markup in synced data and in a user id must show as text, never become elements.
    db.psql(
        "INSERT INTO todos (id, list_id, description, completed, owner_id, created_at) VALUES \
         ('aaaaaaaa-0000-4000-8000-0000000000ff', '11111111-1111-4111-8111-111111111111', \
         '<b id=\"xss-row\">bold</b>', false, 'user1', now())",
    )
    .expect("insert");
    let dir = tempfile::tempdir().expect("dir");
    let api = Api::start_with_config(&dashboard_config(dir.path(), &db, "sg_browser_", true)).await;
    // Connected clients for the clients panel.
    let mut stream = api.stream("user1", "{}", "application/x-ndjson").await;
    stream.until_complete().await;
    let markup_user = r#"<img id="xss-user" src="x">"#;
    let mut markup_stream = api.stream(markup_user, "{}", "application/x-ndjson").await;
    markup_stream.until_complete().await;

    let driver = Driver::start(&chromedriver).await;
    let profile = tempfile::tempdir().expect("profile dir");
    let browser = Browser::open(&driver, &chromium, profile.path()).await;
    browser.go(&format!("{}/dashboard", api.base)).await;

    // A wrong token is refused with the server's reason, and the login form stays.
    browser.type_into("#token", "not-the-token").await;
    browser.click("#login-button").await;
    browser
        .wait_for_text("#login-error", |t| t.contains("not one of"))
        .await;
    let (path, png) = browser.screenshot("login-refused").await;
    assert_non_trivial("login-refused", &path, &png);

    browser.type_into("#token", ADMIN_TOKEN).await;
    browser.click("#login-button").await;
    let replication = browser
        .wait_for_text("#replication-table", |t| t.contains("last applied LSN"))
        .await;
    assert!(replication.contains("open streams"), "{replication}");
    let versions = browser
        .wait_for_text("#versions-table", |t| t.contains("streaming"))
        .await;
    assert!(versions.contains("active"), "{versions}");
    let rules = browser
        .wait_for_text("#rules-text", |t| t.contains("bucket_definitions"))
        .await;
    assert!(rules.contains("list_todos"), "{rules}");
    browser.wait_for_text("#client-count", |t| t == "2").await;
    let clients = browser.text("#clients-table").await;
    assert!(clients.contains("user1") && clients.contains("http"), "{clients}");
    assert!(clients.contains(markup_user), "{clients}");
    assert!(
        browser.elements("#xss-user").await.is_empty(),
        "a user id became markup"
    );
    let (path, png) = browser.screenshot("status").await;
    assert_non_trivial("status", &path, &png);

    // What does user1 get: the buckets and their first rows.
    browser.type_into("#claims", r#"{"sub": "user1"}"#).await;
    browser.click("#user-submit").await;
    let summary = browser
        .wait_for_text("#user-summary", |t| t.contains("bucket(s) at checkpoint"))
        .await;
    assert!(summary.starts_with("4 bucket(s)"), "{summary}");
    let result = browser.text("#user-result").await;
    assert!(
        result.contains("user_todos") && result.contains("global"),
        "{result}"
    );
    assert!(
        result.contains("milk"),
        "a todo of user1 is among the sample rows: {result}"
    );
    assert!(!browser.elements("#user-result .sample-row").await.is_empty());
    assert!(result.contains(r#"<b id=\"xss-row\">bold</b>"#), "{result}");
    assert!(
        browser.elements("#xss-row").await.is_empty(),
        "row data became markup"
    );
    // The screenshot covers the viewport: bring the answer into it.
    browser
        .call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": "document.getElementById('user').scrollIntoView()", "args": []})),
        )
        .await;
    let (path, png) = browser.screenshot("user-buckets").await;
    assert_non_trivial("user-buckets", &path, &png);

    browser.close().await;
    drop(driver);
    drop((stream, markup_stream));
    api.gateway.stop().await;
}
