//! The sign phase: the written module signed by the kernel's own `scripts/sign-file`, with the
//! hash the kernel checks (`CONFIG_MODULE_SIG_HASH` of its config), for a kernel that enforces
//! module signatures (`CONFIG_MODULE_SIG_FORCE`, or Secure Boot's lockdown).
//!
//! `sign-file` appends a PKCS#7 signature (RSA PKCS#1 v1.5, no signing time) and the
//! `~Module signature appended~` marker; for a given key the signature is a function of the
//! module's bytes, so the same inputs still give the same bytes. The key is what the kernel's
//! own signing takes: a PEM file or a PKCS#11 URI (`pkcs11:...`, with `KBUILD_SIGN_PIN` in the
//! environment when the token needs one); the certificate is a PEM or DER file.

use std::fs;
use std::path::{Path, PathBuf};

use super::inputs::Inputs;
use super::kbuild::{self, KernelBuild};
use super::{io_error, BuildError, BuildOptions};

/// The key and certificate a module is signed with, as `kpatch-rs build --sign-key KEY
/// --sign-cert CERT` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// A PEM file with the private key, or a PKCS#11 URI.
    pub key: String,
    /// The X.509 certificate (PEM or DER) of the key.
    pub cert: PathBuf,
}

impl SigningKey {
    /// Whether the key lives on a token (a PKCS#11 URI) rather than in a file.
    pub fn key_is_pkcs11_uri(&self) -> bool {
        self.key.starts_with("pkcs11:")
    }
}

/// How a module was signed, for the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Signature {
    /// The hash algorithm, as `CONFIG_MODULE_SIG_HASH` names it (`sha256`).
    pub hash: String,
}

/// Why a module could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(
        "cannot sign the module: {} is missing; the kernel's modules_prepare builds it when \
         the config enables CONFIG_MODULE_SIG (it needs libssl-dev); remove {} so that \
         kpatch-rs prepares the build directory again",
        sign_file.display(),
        stamp.display()
    )]
    NoSignFile { sign_file: PathBuf, stamp: PathBuf },
    #[error("cannot sign the module: {0}")]
    SignFile(#[from] kbuild::CommandError),
}

/// The hash the kernel checks module signatures with: `CONFIG_MODULE_SIG_HASH` of its config,
/// or None when the config has none (a kernel without module signing). Only a plain algorithm
/// name (`sha256`, `sha3-384`) counts: anything else would reach `sign-file`'s command line.
pub fn module_sig_hash(config: &str) -> Option<String> {
    config.lines().find_map(|line| {
        let value = line.strip_prefix("CONFIG_MODULE_SIG_HASH=")?;
        let hash = value.trim().trim_matches('"');
        let plain = !hash.is_empty()
            && hash
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        plain.then(|| hash.to_string())
    })
}

/// The sign phase: `module` (the bytes post-link wrote) signed with the build's key and the
/// kernel's hash, by the `sign-file` of the original tree's prepared build directory; returned
/// as it is when no signing was asked for.
pub fn sign(
    options: &BuildOptions,
    inputs: &Inputs,
    original: &KernelBuild,
    module: Vec<u8>,
) -> Result<(Vec<u8>, Option<Signature>), BuildError> {
    let (Some(signing_key), Some(hash)) = (&options.signing_key, &inputs.signature_hash) else {
        return Ok((module, None));
    };
    let (signed, signature) = sign_module(
        &original.output,
        hash,
        signing_key,
        &module,
        &inputs.cache.join("sign"),
        &inputs.log,
    )?;
    Ok((signed, Some(signature)))
}

/// Signs `module` with `scripts/sign-file` of the prepared kernel
/// build directory `kernel_build`, in the directory `work`; returns the signed bytes.
pub fn sign_module(
    kernel_build: &Path,
    hash: &str,
    signing_key: &SigningKey,
    module: &[u8],
    work: &Path,
    log: &Path,
) -> Result<(Vec<u8>, Signature), BuildError> {
    let sign_file = kernel_build.join("scripts/sign-file");
    if !sign_file.is_file() {
        return Err(SignError::NoSignFile {
            sign_file,
            stamp: kernel_build.join(".kpatch-prepared"),
        }
        .into());
    }
    fs::create_dir_all(work).map_err(io_error("create", work))?;
    let unsigned = work.join("unsigned.ko");
    let signed = work.join("signed.ko");
    fs::write(&unsigned, module).map_err(io_error("write", &unsigned))?;
    let _ = fs::remove_file(&signed);
    kbuild::sign_file(
        &sign_file,
        hash,
        &signing_key.key,
        &signing_key.cert,
        &unsigned,
        &signed,
        log,
    )
    .map_err(SignError::from)?;
    let bytes = fs::read(&signed).map_err(io_error("read", &signed))?;
    Ok((
        bytes,
        Signature {
            hash: hash.to_string(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_hash(config: &str, expected: Option<&str>) {
        assert_eq!(module_sig_hash(config).as_deref(), expected, "{config:?}");
    }

    #[test]
    fn the_signature_hash_is_the_kernel_configs() {
        check_hash(
            "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_HASH=\"sha256\"\n",
            Some("sha256"),
        );
        check_hash("CONFIG_MODULE_SIG_HASH=\"sha3-512\"\n", Some("sha3-512"));
        check_hash("CONFIG_MODULE_SIG_HASH=sha512\n", Some("sha512"));
        // A kernel without module signing has no hash to sign with.
        check_hash("CONFIG_LIVEPATCH=y\n# CONFIG_MODULE_SIG is not set\n", None);
        check_hash("# CONFIG_MODULE_SIG_HASH=\"sha256\"\n", None);
        check_hash("CONFIG_MODULE_SIG_HASH=\"\"\n", None);
        // Only an algorithm's name reaches sign-file's command line.
        check_hash("CONFIG_MODULE_SIG_HASH=\"sha256 -d\"\n", None);
        check_hash("CONFIG_MODULE_SIG_HASH=\"$(rm)\"\n", None);
    }

    #[test]
    fn only_a_pkcs11_uri_is_a_key_without_a_file() {
        let key = |key: &str| SigningKey {
            key: key.to_string(),
            cert: PathBuf::from("cert.pem"),
        };
        assert!(key("pkcs11:token=kernel;object=signing").key_is_pkcs11_uri());
        assert!(!key("signing_key.pem").key_is_pkcs11_uri());
        assert!(!key("./pkcs11:key.pem").key_is_pkcs11_uri());
    }

    #[test]
    fn a_missing_sign_file_says_what_to_do() {
        let dir = tempfile::tempdir().expect("temp dir");
        let signing_key = SigningKey {
            key: "key.pem".to_string(),
            cert: PathBuf::from("cert.pem"),
        };
        let result = sign_module(
            dir.path(),
            "sha256",
            &signing_key,
            b"\x7fELF",
            &dir.path().join("sign"),
            &dir.path().join("log"),
        );
        let text = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.contains("scripts/sign-file is missing")
                && text.contains("CONFIG_MODULE_SIG")
                && text.contains(".kpatch-prepared"),
            "{text}"
        );
    }
}
