//! The Grafana dashboard's SQL panels run against the collector's real
//! schema (a renamed column would break the dashboard silently otherwise),
//! and the deployment files pass `scripts/check-deploy`.

use headroom_testkit as kit;

#[tokio::test]
async fn dashboard_queries_run_against_the_schema() -> anyhow::Result<()> {
    let db = kit::TestDb::new().await?;
    headroom_store::migrate(&db.pool).await?;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/dashboards/headroom.json"
    );
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut ran = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let Some(sql) = target["rawSql"].as_str() else {
                anyhow::ensure!(
                    target["expr"].is_string(),
                    "{target}: neither SQL nor PromQL"
                );
                continue;
            };
            // Grafana's macro, as it expands it.
            let sql = regex_lite_time_filter(sql);
            db.fixture(&sql)
                .await
                .map_err(|e| anyhow::anyhow!("panel {:?}: {e:#}", panel["title"]))?;
            ran += 1;
        }
    }
    anyhow::ensure!(ran >= 2, "only {ran} SQL panels");
    Ok(())
}

/// `$__timeFilter(col)` → `col BETWEEN now() - interval '6 hours' AND now()`.
fn regex_lite_time_filter(sql: &str) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find("$__timeFilter(") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "$__timeFilter(".len()..];
        let close = after.find(')').expect("closing parenthesis");
        let column = &after[..close];
        out.push_str(&format!(
            "{column} BETWEEN now() - interval '6 hours' AND now()"
        ));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn deployment_files_are_consistent() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/check-deploy");
    let python = std::env::var("HEADROOM_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .arg(script)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `docker-compose config` (the client `scripts/stack up` installs) accepts
/// docker-compose.yml, and refuses a copy with a broken dependency.
#[test]
fn the_compose_file_passes_docker_compose_config() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let client = std::env::var("HEADROOM_DOCKER_COMPOSE")
        .ok()
        .filter(|c| !c.is_empty())
        .expect("HEADROOM_DOCKER_COMPOSE is not set: run `scripts/stack up` and source .stack/env");
    let config = |file: &std::path::Path| {
        std::process::Command::new(&client)
            .args(["--project-directory", root, "-f"])
            .arg(file)
            .args(["config", "-q"])
            .output()
            .expect("docker-compose runs")
    };
    let file = std::path::Path::new(root).join("docker-compose.yml");
    let out = config(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("condition: service_healthy"));
    let broken = text.replacen("condition: service_healthy", "condition: whenever", 1);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("docker-compose.yml");
    std::fs::write(&copy, broken).unwrap();
    let out = config(&copy);
    assert!(
        !out.status.success(),
        "a broken depends_on condition was accepted"
    );
}
