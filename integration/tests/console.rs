//! The web console in a real browser (issue #22): Debian's chromium, driven over WebDriver by
//! chromedriver, against the real control plane (console and gRPC on one TLS port) with a real
//! agent. Each test saves a screenshot to `target/screenshots/` (the README's pictures).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`; `cargo xtask test` installs them as root). Without them the tests say so
//! and do not run, unless `PORTCULLIS_REQUIRE_BROWSER` is set: then they fail.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use portcullis_testkit::{
    Agent, ControlPlane, admission_fixture, free_port, post_review, success, workspace_root,
};

const VIEWER: &str = "viewer-token-0123456789";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless chromium session.
struct Browser {
    rt: tokio::runtime::Runtime,
    client: Client,
    driver: Child,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A browser for the console at `base`, or `None` (after saying how to get one).
    fn start(base: &str) -> Option<Browser> {
        let chromedriver = std::env::var("PORTCULLIS_CHROMEDRIVER").unwrap_or(CHROMEDRIVER.into());
        let chromium = std::env::var("PORTCULLIS_CHROMIUM").unwrap_or(CHROMIUM.into());
        if !PathBuf::from(&chromedriver).exists() || !PathBuf::from(&chromium).exists() {
            if std::env::var_os("PORTCULLIS_REQUIRE_BROWSER").is_some() {
                panic!(
                    "PORTCULLIS_REQUIRE_BROWSER is set but {chromium} or {chromedriver} is missing"
                );
            }
            eprintln!(
                "skipped: no browser. Install Debian's `chromium` and `chromium-driver` (`cargo \
                 xtask test` does, as root), or set PORTCULLIS_CHROMIUM and \
                 PORTCULLIS_CHROMEDRIVER, to run the console's browser tests"
            );
            return None;
        }
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut capabilities = serde_json::Map::new();
        // The control plane's certificate is from its own generated CA.
        capabilities.insert("acceptInsecureCerts".into(), json!(true));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1440,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                match ClientBuilder::new(connector)
                    .capabilities(capabilities.clone())
                    .connect(&url)
                    .await
                {
                    Ok(client) => break client,
                    Err(error) if Instant::now() > deadline => {
                        panic!("no WebDriver session from chromedriver: {error}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Some(Browser {
            rt,
            client,
            driver,
            base: base.to_owned(),
            _profile: profile,
        })
    }

    fn goto(&self, path: &str) {
        self.rt
            .block_on(self.client.goto(&format!("{}{path}", self.base)))
            .unwrap();
    }

    fn path(&self) -> String {
        let url = self.rt.block_on(self.client.current_url()).unwrap();
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    fn fill(&self, css: &str, text: &str) {
        self.rt.block_on(async {
            let element = self.client.find(Locator::Css(css)).await.unwrap();
            element.clear().await.unwrap();
            element.send_keys(text).await.unwrap();
        });
    }

    /// Sets a text area's value (typing a long policy key by key is slow) via WebDriver.
    fn set_value(&self, css: &str, text: &str) {
        self.rt
            .block_on(self.client.execute(
                "document.querySelector(arguments[0]).value = arguments[1];",
                vec![json!(css), json!(text)],
            ))
            .unwrap();
    }

    fn click(&self, css: &str) {
        self.rt.block_on(async {
            self.client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"))
                .click()
                .await
                .unwrap();
        });
    }

    /// Clicks what submits a form or follows a link, and waits for the next page to load.
    fn click_and_load(&self, css: &str) {
        let script = |js: &'static str| {
            self.rt
                .block_on(self.client.execute(js, Vec::new()))
                .unwrap()
        };
        script("document.documentElement.dataset.left = 'yes';");
        self.click(css);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let loaded = script(
                "return document.readyState === 'complete' && !document.documentElement.dataset.left;",
            );
            if loaded == json!(true) {
                return;
            }
            assert!(Instant::now() < deadline, "{css}: no new page within 15 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count(&self, css: &str) -> usize {
        self.rt
            .block_on(self.client.find_all(Locator::Css(css)))
            .unwrap()
            .len()
    }

    fn text(&self, css: &str) -> String {
        self.rt.block_on(async {
            self.client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"))
                .text()
                .await
                .unwrap()
        })
    }

    fn source(&self) -> String {
        self.rt.block_on(self.client.source()).unwrap()
    }

    /// Waits (without reloading) until `css` matches an element.
    fn wait_for(&self, css: &str, within: Duration) {
        self.rt
            .block_on(
                self.client
                    .wait()
                    .at_most(within)
                    .every(Duration::from_millis(20))
                    .for_element(Locator::Css(css)),
            )
            .unwrap_or_else(|e| panic!("{css} within {within:?}: {e}"));
    }

    fn screenshot(&self, name: &str) {
        let png = self.rt.block_on(self.client.screenshot()).unwrap();
        let dir = workspace_root().join("target/screenshots");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    fn sign_in(&self, token: &str) {
        self.goto("/signin");
        self.fill("input[name=token]", token);
        self.click_and_load("form.signin button[type=submit]");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let client = self.client.clone();
        let _ = self.rt.block_on(client.close());
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A control plane with a viewer token, cluster `prod-eu-1` with a synced agent.
fn setup() -> (ControlPlane, Agent, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    fs::write(
        &tokens,
        format!("tokens:\n- {{name: security-lead, role: viewer, token: {VIEWER}}}\n"),
    )
    .unwrap();
    let cp = ControlPlane::start_with(&["--tokens-file", tokens.to_str().unwrap()]);
    let token = cp.register("prod-eu-1");
    let agent = Agent::start(&cp, "prod-eu-1", &token);
    agent.wait_revision(cp.revision());
    (cp, agent, dir)
}

fn base(cp: &ControlPlane) -> String {
    format!("https://localhost:{}", cp.port)
}

fn privileged_review(name: &str) -> Vec<u8> {
    let mut review: Value =
        serde_json::from_slice(&admission_fixture("pod-create-privileged.json")).unwrap();
    let request = &mut review["request"];
    request["uid"] = format!("uid-{name}").into();
    request["name"] = name.into();
    request["object"]["metadata"]["name"] = name.into();
    serde_json::to_vec(&review).unwrap()
}

const POLICY: &str = "name: no-privileged\n\
description: Privileged containers can take over the node\n\
action: block\n\
rules:\n  resource:\n    privileged: {}\n";

#[test]
fn an_admin_signs_in_and_sees_the_fleet() {
    let (cp, _agent, _dir) = setup();
    let Some(browser) = Browser::start(&base(&cp)) else {
        return;
    };
    browser.goto("/fleet");
    assert_eq!(
        browser.path(),
        "/signin",
        "not signed in: to the sign-in page"
    );
    browser.screenshot("console-signin");
    browser.fill("input[name=token]", "not-a-token");
    browser.click_and_load("form.signin button[type=submit]");
    assert!(browser.text("p.error").contains("not a token"));

    browser.sign_in(&cp.admin_token());
    browser.goto("/fleet");
    let row = browser.text("#fleet tbody tr");
    assert!(row.contains("prod-eu-1"), "{row}");
    assert!(row.contains("yes"), "connected: {row}");
    browser.screenshot("console-fleet");
    browser.click_and_load("#fleet tbody tr a");
    assert_eq!(browser.path(), "/fleet/prod-eu-1");
    assert!(browser.source().contains("Save protection"));
    browser.screenshot("console-cluster");

    // The same port still serves gRPC: the CLI works beside the browser.
    success(&cp.admin_cli(&["cluster", "list"]));
    browser.goto("/");
    assert_eq!(browser.count("svg#admissions-chart"), 1);
    browser.click_and_load("form[action='/signout'] button");
    browser.goto("/fleet");
    assert_eq!(browser.path(), "/signin", "signed out");
}

#[test]
fn an_invalid_policy_shows_its_field_path_and_a_valid_one_reaches_the_agent() {
    let (cp, agent, _dir) = setup();
    let Some(browser) = Browser::start(&base(&cp)) else {
        return;
    };
    browser.sign_in(&cp.admin_token());
    browser.goto("/policies/apply");
    let invalid = "name: no-root\nrules:\n  resource:\n    runAsUser: {rule: MustRunAs, ranges: [{min: 2000, max: 1000}]}\n";
    browser.set_value("textarea[name=yaml]", invalid);
    browser.click_and_load("button[value=apply]");
    let errors = browser.text("ul.errors");
    assert!(
        errors.contains("rules.resource.runAsUser.ranges[0]"),
        "{errors}"
    );
    browser.screenshot("console-policy-invalid");
    success(&cp.admin_cli(&["policy", "list"]));
    assert!(agent.policies().is_empty(), "nothing applied");

    browser.set_value("textarea[name=yaml]", POLICY);
    browser.click_and_load("button[value=validate]");
    assert!(browser.text("p.notice").contains("nothing was applied"));
    browser.click_and_load("button[value=apply]");
    assert!(browser.text("#applied").contains("created"));
    agent.wait_revision(cp.revision());
    assert_eq!(agent.policies(), vec!["no-privileged".to_owned()]);
    browser.goto("/policies/no-privileged");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !browser.source().contains("Applied by 1 of 1 clusters") {
        assert!(Instant::now() < deadline, "the agent's ACK never showed");
        std::thread::sleep(Duration::from_millis(200));
        browser.goto("/policies/no-privileged");
    }
    assert!(browser.text("#policy-yaml").contains("privileged: {}"));
    browser.screenshot("console-policy");
    browser.goto("/policies");
    browser.screenshot("console-policies");
}

#[test]
fn a_blocked_admission_arrives_live_and_is_handled() {
    let (cp, agent, dir) = setup();
    let policy = dir.path().join("p.yaml");
    fs::write(&policy, POLICY).unwrap();
    success(&cp.admin_cli(&["policy", "apply", "-f", policy.to_str().unwrap()]));
    agent.wait_revision(cp.revision());
    let Some(browser) = Browser::start(&base(&cp)) else {
        return;
    };
    browser.sign_in(&cp.admin_token());
    browser.goto("/events?action=blocked");
    browser.wait_for("p[data-live-events]", Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !browser.text("p[data-live-events]").starts_with("Live") {
        assert!(Instant::now() < deadline, "the live stream never opened");
        std::thread::sleep(Duration::from_millis(20));
    }

    let admitted = Instant::now();
    let (status, review) = post_review(&agent, privileged_review("payments-api"));
    assert_eq!(status, 200);
    assert_eq!(review["response"]["allowed"], false, "{review}");
    browser.wait_for("#event-rows tr.arrived", Duration::from_secs(10));
    let on_screen = admitted.elapsed();
    eprintln!(
        "blocked admission on screen {} ms after the webhook answered",
        on_screen.as_millis()
    );
    let row = browser.text("#event-rows tr.arrived");
    assert!(
        row.contains("payments-api") && row.contains("no-privileged"),
        "{row}"
    );
    browser.screenshot("console-events-live");

    browser.click("#event-rows tr.arrived input[name=ids]");
    browser.fill("input[name=note]", "Known: CI image build, ticket SEC-42");
    browser.click_and_load("form[action='/events/handle'] button[type=submit]");
    let row = browser.text("#event-rows tr");
    assert!(row.contains("handled") && row.contains("SEC-42"), "{row}");
    browser.click_and_load("#event-rows tr a");
    assert!(browser.text("#findings").contains("privileged"));
    assert!(browser.source().contains("by bootstrap-admin"));
    browser.screenshot("console-event");

    // More of them, for the overview's chart and tables.
    for name in [
        "checkout",
        "checkout-canary",
        "search-indexer",
        "report-builder",
    ] {
        let (status, _) = post_review(&agent, privileged_review(name));
        assert_eq!(status, 200);
    }
    // The overview's counts are at most 10 s old.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        browser.goto("/");
        if browser.text("#top-images").contains("busybox") && browser.source().contains(">5<") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the overview never counted 5 admissions"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    browser.screenshot("console-overview");
}

#[test]
fn a_viewer_finds_no_way_to_write() {
    let (cp, agent, dir) = setup();
    let policy = dir.path().join("p.yaml");
    fs::write(&policy, POLICY).unwrap();
    success(&cp.admin_cli(&["policy", "apply", "-f", policy.to_str().unwrap()]));
    agent.wait_revision(cp.revision());
    let (status, _) = post_review(&agent, privileged_review("batch-job"));
    assert_eq!(status, 200);
    let Some(browser) = Browser::start(&base(&cp)) else {
        return;
    };
    browser.sign_in(VIEWER);
    assert!(browser.text("header .who").contains("viewer"));
    for page in [
        "/",
        "/fleet",
        "/fleet/prod-eu-1",
        "/policies",
        "/policies/no-privileged",
        "/events",
        "/scans",
    ] {
        browser.goto(page);
        assert_eq!(
            browser.count("form[method=post]"),
            1,
            "{page}: only sign-out"
        );
        assert_eq!(
            browser.count("input[type=checkbox], textarea, input[type=file]"),
            0,
            "{page}"
        );
        for href in [
            "/policies/apply",
            "/scans/upload",
            "/policies/no-privileged/delete",
        ] {
            assert_eq!(
                browser.count(&format!("a[href='{href}']")),
                0,
                "{page} links {href}"
            );
        }
    }
    browser.goto("/events");
    browser.screenshot("console-viewer-events");
    browser.goto("/policies/apply");
    assert!(browser.text("p.error").contains("read-only"));
}

#[test]
fn an_admin_uploads_a_scan_report() {
    let (cp, _agent, _dir) = setup();
    let Some(browser) = Browser::start(&base(&cp)) else {
        return;
    };
    browser.sign_in(&cp.admin_token());
    browser.goto("/scans/upload");
    let report = workspace_root()
        .join("crates/scan/tests/scans/trivy/alpine-310.json")
        .canonicalize()
        .unwrap();
    browser.fill("input[type=file]", report.to_str().unwrap());
    browser.click_and_load("form[action='/scans/upload'] button[type=submit]");
    assert!(browser.path().starts_with("/scans/"), "{}", browser.path());
    assert!(browser.text("h1").contains("alpine"));
    browser.screenshot("console-scan");
    browser.goto("/scans");
    assert!(browser.text("#scans").contains("alpine"));
    browser.screenshot("console-scans");
}
