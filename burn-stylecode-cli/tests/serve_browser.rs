//! The page of `stylecode serve` in a real headless Chromium, driven over
//! WebDriver (Debian's `chromium` + `chromium-driver`) against a real server
//! with the tiny fixture weights.
//!
//! Without Chromium the test says so and passes, unless
//! `CI_REQUIRE_BROWSER=1` (set by `.ci/run`, which installs it). With
//! `STYLECODE_SCREENSHOT=PATH` it also saves a screenshot of the page.

mod serve_common;

use base64::Engine;
use serde_json::{json, Value};
use serve_common::{fixtures, Server};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `name` on PATH (or `$ENV`), if present.
fn find(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// A WebDriver session on a chromedriver of our own; both end when dropped.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start(chromium: &std::path::Path, chromedriver: &std::path::Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser { driver, base, session: String::new(), _profile: profile };
        wait("chromedriver to be ready", Duration::from_secs(30), || {
            ureq::get(&format!("{}/status", browser.base)).call().ok().map(|_| ())
        });
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".to_string(), // CI runs as root
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--window-size=1400,900".to_string(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium.display().to_string(), "args": args },
        } } });
        let session = browser.send("POST", "/session", Some(capabilities));
        browser.session = session["sessionId"].as_str().expect("a session id").to_string();
        browser
    }

    /// One WebDriver command; its `value`.
    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
        let request = agent.request(method, &url);
        let result = match body {
            Some(body) => request.set("Content-Type", "application/json").send_string(&body.to_string()),
            None => request.call(),
        };
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                panic!("WebDriver {method} {path}: {status} {}", response.into_string().unwrap_or_default())
            }
            Err(error) => panic!("WebDriver {method} {path}: {error}"),
        };
        let value: Value = serde_json::from_str(&response.into_string().unwrap()).unwrap();
        value["value"].clone()
    }

    fn session_path(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    fn goto(&self, url: &str) {
        self.send("POST", &self.session_path("/url"), Some(json!({ "url": url })));
    }

    fn script(&self, script: &str) -> Value {
        self.send("POST", &self.session_path("/execute/sync"), Some(json!({ "script": script, "args": [] })))
    }

    fn element(&self, css: &str) -> String {
        let found =
            self.send("POST", &self.session_path("/element"), Some(json!({ "using": "css selector", "value": css })));
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element `{css}`: {found}")).to_string()
    }

    fn click(&self, css: &str) {
        let element = self.element(css);
        self.send("POST", &self.session_path(&format!("/element/{element}/click")), Some(json!({})));
    }

    /// Replaces the field's text by typing `text`.
    fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css);
        self.send("POST", &self.session_path(&format!("/element/{element}/clear")), Some(json!({})));
        self.keys(css, text);
    }

    /// Presses `keys` in the element (WebDriver's key codes for Ctrl, Enter…).
    fn keys(&self, css: &str, keys: &str) {
        let element = self.element(css);
        self.send("POST", &self.session_path(&format!("/element/{element}/value")), Some(json!({ "text": keys })));
    }

    /// Picks `path` in a file input, as the user would in its dialog.
    fn pick_file(&self, css: &str, path: &std::path::Path) {
        let element = self.element(css);
        let text = path.display().to_string();
        self.send("POST", &self.session_path(&format!("/element/{element}/value")), Some(json!({ "text": text })));
    }

    /// Waits until `script` (an expression) is truthy; returns its value.
    fn wait_for(&self, what: &str, seconds: u64, expression: &str) -> Value {
        let script = format!("return ({expression}) || null;");
        wait(what, Duration::from_secs(seconds), || {
            let value = self.script(&script);
            (!value.is_null()).then_some(value)
        })
    }

    fn screenshot(&self) -> Vec<u8> {
        let data = self.send("GET", &self.session_path("/screenshot"), None);
        base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap()).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Polls `probe` every 100 ms until it gives a value, for at most `limit`.
fn wait<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_page_encodes_generates_fills_the_seed_and_cancels() {
    let (Some(chromium), Some(chromedriver)) = (find("CHROMIUM", "chromium"), find("CHROMEDRIVER", "chromedriver"))
    else {
        assert!(
            std::env::var("CI_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "CI_REQUIRE_BROWSER=1 but chromium or chromedriver is not on PATH"
        );
        eprintln!("skipped: no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)");
        return;
    };
    let loras = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("lora/kohya.safetensors"), loras.path().join("kohya.safetensors")).unwrap();
    let server = Server::start(&["--loras", loras.path().to_str().unwrap()]);
    let browser = Browser::start(&chromium, &chromedriver);
    browser.goto(&server.url("/"));
    browser.wait_for(
        "the health line",
        30,
        "document.getElementById('health').textContent.includes('weights version')",
    );

    // Encode: pick the fixture PNG; its code (PyTorch's reference) appears.
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference/encode.json")).unwrap()).unwrap();
    let expected = reference["images"].as_array().unwrap().iter().find(|e| e["path"] == "images/drawing.png").unwrap()
        ["code"]
        .clone();
    let drawing = fixtures().join("images/drawing.png").canonicalize().unwrap();
    browser.pick_file("#encode-input", &drawing);
    let shown = browser.wait_for("a code", 60, "document.querySelector('.code-card .code')?.textContent");
    assert_eq!(shown, expected);
    let bars = browser.script("return document.querySelectorAll('.code-card .bars div').length;");
    assert_eq!(bars, 20);
    browser.click(".code-card .use-in-generate");
    assert_eq!(browser.script("return document.querySelector('#styles .code-input').value;"), expected);

    // A LoRA from the server's folder, at weight 0.5.
    browser.wait_for("the LoRA list", 30, "!document.getElementById('add-lora').disabled");
    browser.click("#add-lora");
    assert_eq!(browser.script("return document.querySelector('#loras .lora-name').value;"), "kohya.safetensors");
    browser.type_into("#loras .lora-weight", "0.5");

    // Generate: progress reaches the last step, the live preview shows, the image lands in the gallery.
    browser.type_into("#prompt", "a lighthouse at dusk");
    for (id, value) in [("width", "32"), ("height", "32"), ("steps", "3"), ("seed", "5")] {
        browser.type_into(&format!("#{id}"), value);
    }
    browser.click("#generate-button");
    let text = browser.wait_for(
        "the job to finish",
        120,
        "(t => t.includes('done') && t)(document.getElementById('progress-text').textContent)",
    );
    assert!(text.as_str().unwrap().starts_with("step 3/3"), "{text}");
    let size = browser.wait_for(
        "the image in the gallery",
        30,
        "(i => i && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight])(document.querySelector('.gallery-item img'))",
    );
    assert_eq!(size, json!([32, 32]));
    let previews = browser.wait_for(
        "the preview",
        30,
        "(p => !p.hidden && p.naturalWidth > 0 && Number(p.dataset.previews))(document.getElementById('preview'))",
    );
    assert!(previews.as_u64().unwrap() >= 1, "{previews}");
    let recipe = browser.script("return document.querySelector('.gallery-item .recipe').textContent;");
    assert!(recipe.as_str().unwrap().contains(&format!("stylecode: {}", expected.as_str().unwrap())), "{recipe}");
    assert!(recipe.as_str().unwrap().contains("loras: kohya.safetensors:0.5:0.5:"), "{recipe}");
    assert_eq!(serve_common::png_files(&server.outputs).len(), 1);

    if let Some(path) = std::env::var_os("STYLECODE_SCREENSHOT") {
        std::fs::write(path, browser.screenshot()).unwrap();
    }

    // "Use this seed" fills the form.
    browser.type_into("#seed", "123");
    browser.click(".gallery-item .use-seed");
    assert_eq!(browser.script("return document.getElementById('seed').value;"), "5");

    // Codes: a random one, and the mix of the form's one code (itself).
    browser.click("#random-code");
    let random = browser.wait_for("a random code", 30, "document.querySelector('#code-tools .code')?.textContent");
    assert_eq!(random.as_str().unwrap().chars().count(), 21, "{random}");
    browser.click("#mix-codes");
    let mixed = browser.wait_for(
        "the mix",
        30,
        "(c => c.length == 2 && c[0].textContent)(document.querySelectorAll('#code-tools .code'))",
    );
    assert_eq!(mixed, expected);

    // Dropping our PNG on the page loads its recipe into the form.
    browser.type_into("#prompt", "something else");
    browser.type_into("#seed", "99");
    browser.script(
        "const img = document.querySelector('.gallery-item img');
         fetch(img.src).then(r => r.blob()).then(blob => {
           const data = new DataTransfer();
           data.items.add(new File([blob], 'ours.png', { type: 'image/png' }));
           document.getElementById('gallery').dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true }));
         });
         return null;",
    );
    browser.wait_for(
        "the dropped recipe",
        30,
        "document.getElementById('prompt').value == 'a lighthouse at dusk' && document.getElementById('seed').value == '5'",
    );

    // Ctrl+Enter starts a long job; Cancel stops it, and the form is ready again.
    for (id, value) in [("width", "16"), ("height", "16"), ("steps", "400"), ("num", "16")] {
        browser.type_into(&format!("#{id}"), value);
    }
    browser.keys("#prompt", "\u{E009}\u{E007}\u{E000}"); // Ctrl down, Enter, release
    browser.wait_for(
        "the long job to start",
        60,
        // The button is enabled once the job is accepted; the text may still be the last job's before that.
        "!document.getElementById('cancel-button').disabled && document.getElementById('progress-text').textContent.startsWith('step')",
    );
    browser.click("#cancel-button");
    browser.wait_for("the cancel", 60, "document.getElementById('progress-text').textContent.includes('cancelled')");
    assert_eq!(browser.script("return document.getElementById('generate-button').disabled;"), false);

    // A server error shows next to its field.
    browser.type_into("#width", "30");
    browser.click("#generate-button");
    let error =
        browser.wait_for("the width error", 30, "document.querySelector('.error[data-field=width]').textContent");
    assert!(error.as_str().unwrap().contains("width 30"), "{error}");
}
