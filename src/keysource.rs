//! Turns the key options into a `UserKey`. Key bytes go from their source
//! straight into zeroizing buffers and are never printed.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use chronicle_mount::UserKey;
use zeroize::Zeroizing;

use crate::cli::KeyArgs;

pub const DEFAULT_KEY_ENV: &str = "CHRONICLE_ENCRYPTION_KEY";

/// What a passphrase is for: creating a volume asks twice.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Open,
    Create,
}

/// Resolves the key options. `passphrase_env` is the variable consulted
/// before prompting (CHRONICLE_PASSPHRASE, or CHRONICLE_NEW_PASSPHRASE for a
/// new key).
pub fn resolve(args: &KeyArgs, purpose: Purpose, passphrase_env: &str) -> Result<UserKey> {
    if args.passphrase {
        return passphrase(purpose, passphrase_env);
    }
    if let Some(path) = &args.key_file {
        return from_file(path);
    }
    if let Some(cmd) = &args.key_command {
        return from_command(cmd);
    }
    let name = args.key_env.as_deref().unwrap_or(DEFAULT_KEY_ENV);
    let value = Zeroizing::new(std::env::var(name).map_err(|_| {
        if args.key_env.is_some() {
            anyhow!("environment variable {name} is not set (it should hold the key as 64 hex characters)")
        } else {
            anyhow!(
                "no key given: set {DEFAULT_KEY_ENV} to 64 hex characters (openssl rand -hex 32), \
                 or use --key-file, --key-env, --key-command or --passphrase"
            )
        }
    })?);
    Ok(UserKey::from_hex(&value, &format!("key in {name}"))?)
}

fn from_file(path: &Path) -> Result<UserKey> {
    let mut bytes = Zeroizing::new(Vec::new());
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading the key from standard input")?;
        return Ok(UserKey::from_file_bytes(&bytes, "key from standard input")?);
    }
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    file.read_to_end(&mut bytes)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    Ok(UserKey::from_file_bytes(
        &bytes,
        &format!("key file {}", path.display()),
    )?)
}

fn from_command(cmd: &str) -> Result<UserKey> {
    let output = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::inherit())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run the key command with sh")?;
    let stdout = Zeroizing::new(output.stdout);
    if !output.status.success() {
        bail!("key command failed ({}); nothing was done", output.status);
    }
    Ok(UserKey::from_file_bytes(
        &stdout,
        "output of the key command",
    )?)
}

fn passphrase(purpose: Purpose, env_name: &str) -> Result<UserKey> {
    let phrase = match std::env::var(env_name) {
        Ok(value) => Zeroizing::new(value),
        Err(_) => prompt(purpose, env_name)?,
    };
    if phrase.is_empty() {
        bail!("the passphrase is empty");
    }
    Ok(UserKey::Passphrase(phrase))
}

fn prompt(purpose: Purpose, env_name: &str) -> Result<Zeroizing<String>> {
    if !std::io::stdin().is_terminal() {
        bail!("--passphrase needs a terminal to prompt on, or the passphrase in {env_name}");
    }
    let first = Zeroizing::new(
        rpassword::prompt_password("Passphrase: ").context("reading the passphrase")?,
    );
    if purpose == Purpose::Create {
        let again = Zeroizing::new(
            rpassword::prompt_password("Repeat passphrase: ").context("reading the passphrase")?,
        );
        if *first != *again {
            bail!("the two passphrases differ");
        }
    }
    Ok(first)
}
