//! The operator console in a real browser: headless Chromium driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`, installed by
//! `scripts/setup`) against a real local cluster. Screenshots go to
//! `$ROAM_SCREENSHOTS` (else `console-screenshots` in the test's
//! temporary directory under `target/`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use roam_proto::{MigrationPhase, NodeStatus, paths};

use crate::cluster::{Cluster, PATIENT, Proc, poll};
use crate::control_plane::free_port;

/// How long the browser side waits for something to be drawn.
const DRAWN: Duration = Duration::from_secs(60);

/// Where screenshots go.
fn screenshots() -> PathBuf {
    let dir = std::env::var_os("ROAM_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `chromedriver` on a free port, and a headless Chromium session on it
/// that accepts the cluster's certificate (its CA is the cluster's own).
async fn browser() -> (Proc, Client) {
    let port = free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; `scripts/setup` installs it)");
    let driver = Proc::new(driver);
    let mut caps = serde_json::Map::new();
    caps.insert("acceptInsecureCerts".into(), serde_json::json!(true));
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1100"],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => break c,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no WebDriver session: {e}"),
        }
    };
    (driver, client)
}

/// Wait until `css` matches at least one element whose text passes `ok`;
/// returns the texts of all matches.
async fn wait_for(
    b: &Client,
    css: &str,
    what: &str,
    ok: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let start = Instant::now();
    loop {
        let mut texts = Vec::new();
        if let Ok(found) = b.find_all(Locator::Css(css)).await {
            for e in found {
                texts.push(e.text().await.unwrap_or_default());
            }
        }
        if !texts.is_empty() && ok(&texts) {
            return texts;
        }
        assert!(
            start.elapsed() < DRAWN,
            "the console never drew {what} (`{css}`: {texts:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pre-copy rounds drawn in the timeline of the row `done`, and the
/// timeline's text.
async fn drawn_timeline(
    b: &Client,
    done: &str,
) -> Result<(Vec<String>, String), fantoccini::error::CmdError> {
    let rounds = b
        .find_all(Locator::Css(&format!(
            "{done} .timeline li[data-phase='{}']",
            MigrationPhase::Precopy.as_str()
        )))
        .await?;
    let mut seen = Vec::new();
    for r in &rounds {
        seen.push(r.attr("data-round").await?.unwrap_or_default());
    }
    let timeline = b
        .find(Locator::Css(&format!("{done} .timeline")))
        .await?
        .text()
        .await?;
    Ok((seen, timeline))
}

async fn shot(b: &Client, name: &str) -> PathBuf {
    let png = b.screenshot().await.unwrap();
    let path = screenshots().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
    path
}

async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}`: {e}"))
        .click()
        .await
        .unwrap();
}

/// Three sites, hosts slowed per round so a migration's rounds can be
/// seen as they happen.
fn cluster() -> Cluster {
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", PATIENT)]);
    let slow = [("ROAM_FAULT_ROUND_DELAY_MS", "400")];
    c.add_host_with("eu-1", "eu-west-1", "EU", &[], &slow);
    c.add_host_with("eu-2", "eu-central-1", "EU", &[], &slow);
    c.add_host_with("us-1", "us-east-1", "US", &[], &slow);
    c.wait_ready(3);
    c
}

#[test]
fn the_console_shows_the_fleet_live_and_migrates_and_drains_from_the_browser() {
    let c = cluster();
    let (operator, _) = c.create_token(serde_json::json!({ "role": "operator" }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_driver, b) = browser().await;
        let ui = format!("{}{}", c.url, paths::scheduler::UI);

        // Signed out, the page asks for a token; a wrong one is refused.
        b.goto(&ui).await.unwrap();
        let token = b.wait().for_element(Locator::Id("token")).await.unwrap();
        token.send_keys("roam_not-a-token").await.unwrap();
        click(&b, "#sign-in-button").await;
        wait_for(&b, "#sign-in-error", "the refusal", |t| {
            t[0].contains("Not signed in")
        })
        .await;
        let token = b.find(Locator::Id("token")).await.unwrap();
        token.clear().await.unwrap();
        token.send_keys(&operator).await.unwrap();
        click(&b, "#sign-in-button").await;

        // Three sites, each with its host.
        wait_for(&b, "article.site", "three sites", |t| t.len() == 3).await;
        for (site, host) in [
            ("eu-west-1", "eu-1"),
            ("eu-central-1", "eu-2"),
            ("us-east-1", "us-1"),
        ] {
            let css = format!("article.site[data-site='{site}'] tr.host[data-host='{host}']");
            wait_for(&b, &css, host, |t| {
                t[0].contains(NodeStatus::Ready.to_string().as_str())
            })
            .await;
        }
        wait_for(&b, "#stream.live", "the live event stream", |_| true).await;
        shot(&b, "1-sites").await;

        // The session is an HttpOnly cookie; with it alone, a call that
        // changes something is refused without the page's CSRF token.
        let cookies = b.get_all_cookies().await.unwrap();
        let session = cookies
            .iter()
            .find(|k| k.name() == "roam_session")
            .expect("a session cookie");
        assert_eq!(session.http_only(), Some(true));
        assert_eq!(
            session.same_site().map(|s| s.to_string()).as_deref(),
            Some("Strict")
        );
        let cordon = paths::node_action("eu-1", paths::NodeAction::Cordon)
            .unwrap()
            .on(&c.url);
        let refused = c
            .agent
            .post(&cordon)
            .header("cookie", format!("roam_session={}", session.value()))
            .config()
            .http_status_as_error(false)
            .build()
            .send("{}")
            .unwrap();
        assert_eq!(refused.status(), 403, "a cookie without its CSRF token");
        let page = c.agent.get(&ui).call().unwrap();
        let csp = page
            .headers()
            .get("content-security-policy")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );

        // Deployed from the CLI, the workload appears without a reload.
        crate::migrate::deploy_eu_counter(&c);
        let row = "tr.workload[data-workload='counter'] .placement";
        wait_for(&b, row, "counter's placement", |_| true).await;
        let source = crate::migrate::host_of(&c, "counter");
        let target = crate::migrate::other_eu(&source);
        shot(&b, "2-deployed").await;

        // The migration dialog: the US host is refused, with the reason.
        click(
            &b,
            &format!(
                "button[data-action='migrate'][data-workload='counter'][data-host='{source}']"
            ),
        )
        .await;
        let us = wait_for(
            &b,
            "li.target.refused[data-host='us-1']",
            "the US host refused",
            |t| t[0].contains("—"),
        )
        .await;
        eprintln!("the US target: {}", us[0]);
        assert!(
            us[0].to_lowercase().contains("jurisdiction"),
            "the reason names the rule: {}",
            us[0]
        );
        let us_radio = b.find(Locator::Id("target-us-1")).await.unwrap();
        assert!(
            !us_radio.is_enabled().await.unwrap(),
            "the US host cannot be picked"
        );
        shot(&b, "3-migrate-dialog").await;
        click(&b, &format!("#target-{target}")).await;
        // Under load: its pages keep changing, so pre-copy takes rounds.
        let load = crate::migrate::Load::start(&c, "counter", 2);
        click(&b, "#migrate-go").await;

        // Its phases and rounds are drawn as they happen, then its downtime.
        let done = format!(
            "tr.migration[data-phase='{}']",
            MigrationPhase::Done.as_str()
        );
        let done = done.as_str();
        wait_for(&b, done, "the migration done", |_| true).await;
        // Live updates redraw the row: read it whole, again if it was
        // replaced while being read.
        let started = Instant::now();
        let (seen, timeline) = loop {
            match drawn_timeline(&b, done).await {
                Ok(drawn) => break drawn,
                Err(e) => {
                    assert!(started.elapsed() < DRAWN, "the timeline: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        eprintln!("the timeline drawn: {timeline:?}");
        assert!(
            seen.len() >= 2,
            "at least two pre-copy rounds drawn before done: {timeline:?}"
        );
        let downtime = wait_for(&b, &format!("{done} td.downtime"), "the downtime", |t| {
            !t[0].is_empty()
        })
        .await;
        eprintln!("downtime shown: {}", downtime[0]);
        wait_for(&b, "#downtime-chart rect.bar", "the downtime chart", |_| {
            true
        })
        .await;
        wait_for(
            &b,
            &format!("tr.workload[data-workload='counter'] .placement[data-host='{target}']"),
            "counter shown on its new host",
            |_| true,
        )
        .await;
        // The migration raised its generation.
        wait_for(
            &b,
            "tr.workload[data-workload='counter'] td.generation",
            "the raised generation",
            |t| t[0] != "0",
        )
        .await;
        shot(&b, "4-migrated").await;
        load.check(&c, "counter");
        assert_eq!(crate::migrate::host_of(&c, "counter"), target);

        // Drain the host it runs on now: it moves back, live.
        click(
            &b,
            &format!("button[data-action='drain'][data-host='{target}']"),
        )
        .await;
        wait_for(
            &b,
            &format!("tr.workload[data-workload='counter'] .placement[data-host='{source}']"),
            "counter moved off the drained host",
            |_| true,
        )
        .await;
        wait_for(
            &b,
            &format!("tr.host[data-host='{target}']"),
            "the drained host cordoned",
            |t| t[0].contains(NodeStatus::Cordoned.to_string().as_str()),
        )
        .await;
        wait_for(
            &b,
            "li.event[data-type='host_draining']",
            "the drain event",
            |_| true,
        )
        .await;
        shot(&b, "5-drained").await;
        let _ = b.close().await;
    });
    poll(
        Duration::from_secs(30),
        "counter to serve after all",
        || c.invoke("counter", "/apples").0 == 200,
    );
}
