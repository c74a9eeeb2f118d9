//! `crius config` and start-up refusals of bad configuration.

use crius_e2e::run_crius;

#[test]
fn config_prints_the_effective_config_with_flags_applied() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("crius.toml");
    std::fs::write(&file, "root = \"/srv/crius\"\n[log]\nlevel = \"debug\"\n")?;
    let output = run_crius(&["config", "--config", file.to_str().expect("utf8"), "--run-root", "/run/other"])?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout)?;
    assert!(text.contains("root = \"/srv/crius\""), "{text}");
    assert!(text.contains("run_root = \"/run/other\""), "{text}");
    assert!(text.contains("socket = \"/run/crius/crius.sock\""), "defaults shown: {text}");
    assert!(text.contains("level = \"debug\""), "{text}");
    Ok(())
}

#[test]
fn unknown_key_fails_at_start_naming_the_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("crius.toml");
    std::fs::write(&file, "[server]\nsocket_mod = \"600\"\n")?;
    let output = run_crius(&["--config", file.to_str().expect("utf8"), "--socket", "/tmp/never.sock"])?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("socket_mod") && stderr.contains("socket_mode"), "{stderr}");
    assert!(!std::path::Path::new("/tmp/never.sock").exists());
    Ok(())
}

#[test]
fn bad_value_fails_at_start_with_what_is_allowed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("crius.toml");
    std::fs::write(&file, "[log]\nformat = \"yaml\"\n")?;
    let output = run_crius(&["--config", file.to_str().expect("utf8")])?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("yaml") && stderr.contains("`text`") && stderr.contains("`json`"), "{stderr}");
    Ok(())
}

#[test]
fn missing_explicit_config_file_is_an_error() -> anyhow::Result<()> {
    let output = run_crius(&["config", "--config", "/nonexistent/crius.toml"])?;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8(output.stderr)?.contains("/nonexistent/crius.toml"));
    Ok(())
}
