//! `--disk` parameters: `path=FILE[,readonly=on|off]`.
//!
//! What this module does not do: open the file (see `disk`); paths that
//! contain a comma cannot be given.

use std::path::PathBuf;
use std::str::FromStr;

/// Errors in a `--disk` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskConfigError {
    /// No `path=`.
    #[error("--disk {value:?} has no path: write --disk path=FILE[,readonly=on]")]
    MissingPath {
        /// The whole value.
        value: String,
    },
    /// `path=` with nothing after it.
    #[error("--disk {value:?} has an empty path: write --disk path=FILE[,readonly=on]")]
    EmptyPath {
        /// The whole value.
        value: String,
    },
    /// A part without `=`.
    #[error(
        "--disk {value:?}: {part:?} is not key=value; the keys are path and readonly, \
         separated by commas (paths with a comma are not supported)"
    )]
    NotKeyValue {
        /// The whole value.
        value: String,
        /// The part.
        part: String,
    },
    /// A key other than `path` and `readonly`.
    #[error("--disk {value:?}: unknown key {key:?}; the keys are path and readonly")]
    UnknownKey {
        /// The whole value.
        value: String,
        /// The key.
        key: String,
    },
    /// A key given twice.
    #[error("--disk {value:?}: {key} is given twice; give it once")]
    DuplicateKey {
        /// The whole value.
        value: String,
        /// The key.
        key: String,
    },
    /// `readonly=` with something other than on or off.
    #[error("--disk {value:?}: readonly={flag:?} is not valid; write readonly=on or readonly=off")]
    BadReadonly {
        /// The whole value.
        value: String,
        /// The given flag.
        flag: String,
    },
}

/// A disk to attach as virtio-blk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image file (or block device).
    pub path: PathBuf,
    /// Whether the guest may only read it.
    pub readonly: bool,
}

/// Parses `path=FILE[,readonly=on|off]` (keys in any order).
pub fn parse_disk(s: &str) -> Result<DiskConfig, DiskConfigError> {
    let value = || s.to_string();
    let mut path = None;
    let mut readonly = None;
    for part in s.split(',') {
        let Some((key, v)) = part.split_once('=') else {
            return Err(DiskConfigError::NotKeyValue {
                value: value(),
                part: part.to_string(),
            });
        };
        let duplicate = || DiskConfigError::DuplicateKey {
            value: value(),
            key: key.to_string(),
        };
        match key {
            "path" => {
                if path.replace(v).is_some() {
                    return Err(duplicate());
                }
            }
            "readonly" => {
                let flag = match v {
                    "on" => true,
                    "off" => false,
                    _ => {
                        return Err(DiskConfigError::BadReadonly {
                            value: value(),
                            flag: v.to_string(),
                        })
                    }
                };
                if readonly.replace(flag).is_some() {
                    return Err(duplicate());
                }
            }
            _ => {
                return Err(DiskConfigError::UnknownKey {
                    value: value(),
                    key: key.to_string(),
                })
            }
        }
    }
    match path {
        None => Err(DiskConfigError::MissingPath { value: value() }),
        Some("") => Err(DiskConfigError::EmptyPath { value: value() }),
        Some(p) => Ok(DiskConfig {
            path: PathBuf::from(p),
            readonly: readonly.unwrap_or(false),
        }),
    }
}

impl FromStr for DiskConfig {
    type Err = DiskConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_disk(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_values() {
        assert_eq!(
            parse_disk("path=/x/y.img").unwrap(),
            DiskConfig {
                path: "/x/y.img".into(),
                readonly: false
            }
        );
        assert_eq!(
            parse_disk("path=/x/y.img,readonly=on").unwrap(),
            DiskConfig {
                path: "/x/y.img".into(),
                readonly: true
            }
        );
        let c: DiskConfig = "readonly=off,path=a=b".parse().unwrap();
        assert_eq!(c.path, PathBuf::from("a=b"));
        assert!(!c.readonly);
    }

    #[test]
    fn bad_values_say_what_to_write() {
        let cases = [
            ("", "is not key=value"),
            ("/x/y.img", "is not key=value"),
            ("readonly=on", "has no path"),
            ("path=", "empty path"),
            ("path=a,ro=on", "unknown key \"ro\""),
            ("path=a,readonly=yes", "readonly=on or readonly=off"),
            ("path=a,readonly=on,readonly=off", "readonly is given twice"),
            ("path=a,path=b", "path is given twice"),
            ("path=a,", "is not key=value"),
            ("path=a,b", "paths with a comma are not supported"),
        ];
        for (input, needle) in cases {
            let msg = parse_disk(input).unwrap_err().to_string();
            assert!(msg.contains(needle), "{input:?}: {msg}");
        }
    }
}
