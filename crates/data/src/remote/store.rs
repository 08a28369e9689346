//! The object-store clients, one per (store, storage settings), shared by every reader of the
//! process, and the small tokio runtime that drives them from the data workers' threads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::http::HttpBuilder;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use tokio::runtime::Runtime;

use super::object_url::{ObjectUrl, Scheme};
use super::request_retry::redact;
use super::storage_config::StorageConfig;
use crate::error::{Error, RemoteFailure, Result};

/// Runs a request from a plain thread. Two threads serve every open object's fetches.
pub(crate) fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("corenet-store")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the object-store runtime: {e}"))
    })
}

type StoreKey = (Scheme, String, String);

/// The client for `url`'s bucket under `cfg`, built on first use.
pub(crate) fn store_for(url: &ObjectUrl, cfg: &StorageConfig) -> Result<Arc<dyn ObjectStore>> {
    static STORES: OnceLock<Mutex<HashMap<StoreKey, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let settings = serde_json::to_string(cfg).unwrap_or_default();
    let key = (url.scheme, url.authority.clone(), settings);
    let stores = STORES.get_or_init(Default::default);
    if let Some(store) = stores.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(store);
    }
    let store = build(url, cfg)?;
    if let Ok(mut m) = stores.lock() {
        m.insert(key, Arc::clone(&store));
    }
    Ok(store)
}

fn build(url: &ObjectUrl, cfg: &StorageConfig) -> Result<Arc<dyn ObjectStore>> {
    let root = url.with_key("").to_string();
    let failed = |e: object_store::Error| Error::Remote {
        url: root.clone(),
        message: format!("cannot set up the client: {}", redact(&e.to_string())),
        failure: RemoteFailure::Config,
    };
    // Every retry is ours (request_retry.rs), so that it is counted and resumes mid-block.
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 0,
        retry_timeout: Duration::from_secs_f64(cfg.retry_seconds),
    };
    let http_endpoint = cfg
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    let client = ClientOptions::new()
        .with_timeout(Duration::from_secs_f64(cfg.timeout_seconds))
        .with_connect_timeout(
            Duration::from_secs(5).min(Duration::from_secs_f64(cfg.timeout_seconds)),
        )
        .with_allow_http(http_endpoint || url.scheme == Scheme::Http);
    let store: Arc<dyn ObjectStore> = match url.scheme {
        Scheme::S3 => Arc::new(
            s3(url, cfg, &root)?
                .with_retry(retry)
                .with_client_options(client)
                .build()
                .map_err(failed)?,
        ),
        Scheme::Gcs => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&url.authority)
                .with_skip_signature(cfg.anonymous)
                .with_retry(retry)
                .with_client_options(client)
                .build()
                .map_err(failed)?,
        ),
        Scheme::Azure => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_container_name(&url.authority)
                .with_skip_signature(cfg.anonymous)
                .with_retry(retry)
                .with_client_options(client)
                .build()
                .map_err(failed)?,
        ),
        Scheme::Https | Scheme::Http => Arc::new(
            HttpBuilder::new()
                .with_url(root.trim_end_matches('/'))
                .with_retry(retry)
                .with_client_options(client)
                .build()
                .map_err(failed)?,
        ),
    };
    Ok(store)
}

/// S3 settings: the environment first (`AWS_*`), then the shared config files' profile, then
/// the recipe's `storage` overrides.
fn s3(url: &ObjectUrl, cfg: &StorageConfig, root: &str) -> Result<AmazonS3Builder> {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(&url.authority);
    let profile = SharedProfile::load();
    let unset = |b: &AmazonS3Builder, k: &AmazonS3ConfigKey| b.get_config_value(k).is_none();
    for (key, value) in profile.settings {
        if unset(&b, &key) {
            b = b.with_config(key, value);
        }
    }
    if let Some(e) = &cfg.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(r) = &cfg.region {
        b = b.with_region(r);
    } else if unset(&b, &AmazonS3ConfigKey::Region) && unset(&b, &AmazonS3ConfigKey::DefaultRegion)
    {
        b = b.with_region("us-east-1");
    }
    if cfg.anonymous {
        return Ok(b.with_skip_signature(true));
    }
    let has = |k| !unset(&b, &k);
    let found = has(AmazonS3ConfigKey::AccessKeyId)
        || has(AmazonS3ConfigKey::WebIdentityTokenFile)
        || has(AmazonS3ConfigKey::ContainerCredentialsRelativeUri)
        || has(AmazonS3ConfigKey::ContainerCredentialsFullUri);
    if !found && !cfg.instance_metadata {
        return Err(Error::Remote {
            url: root.to_string(),
            message: format!(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in {} (AWS_PROFILE picks one), or data.storage.anonymous: true for a public bucket (instance_metadata: true to use an EC2 role)",
                profile.credentials_file.display()
            ),
            failure: RemoteFailure::Denied,
        });
    }
    Ok(b)
}

/// The `AWS_PROFILE` (or `default`) profile of `~/.aws/credentials` and `~/.aws/config`.
struct SharedProfile {
    settings: Vec<(AmazonS3ConfigKey, String)>,
    credentials_file: PathBuf,
}

impl SharedProfile {
    fn load() -> SharedProfile {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let aws_dir = env("HOME").unwrap_or_default().join(".aws");
        let credentials_file =
            env("AWS_SHARED_CREDENTIALS_FILE").unwrap_or(aws_dir.join("credentials"));
        let config_file = env("AWS_CONFIG_FILE").unwrap_or(aws_dir.join("config"));
        let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
        let mut settings = Vec::new();
        let keys = [
            ("aws_access_key_id", AmazonS3ConfigKey::AccessKeyId),
            ("aws_secret_access_key", AmazonS3ConfigKey::SecretAccessKey),
            ("aws_session_token", AmazonS3ConfigKey::Token),
            ("region", AmazonS3ConfigKey::Region),
            ("endpoint_url", AmazonS3ConfigKey::Endpoint),
        ];
        // The config file names its sections `profile NAME`, except `default`.
        let config_section = if name == "default" {
            name.clone()
        } else {
            format!("profile {name}")
        };
        for (file, section) in [
            (&credentials_file, name.as_str()),
            (&config_file, config_section.as_str()),
        ] {
            let Ok(ini) = ini::Ini::load_from_file(file) else {
                continue;
            };
            let Some(props) = ini.section(Some(section)) else {
                continue;
            };
            for (field, key) in &keys {
                if let Some(v) = props.get(*field) {
                    settings.push((*key, v.to_string()));
                }
            }
        }
        SharedProfile {
            settings,
            credentials_file,
        }
    }
}
