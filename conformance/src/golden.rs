//! The golden table of return codes: one direct call through the C ABI per rule of the
//! specification's template and per-attribute rules (see `pkcs11-rules.md`), with the codes the
//! specification allows. Where it leaves the code open, `accept` lists every code a conformant
//! module may return and the report shows which one each module chose.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use der::Decode as _;

use crate::client::{
    Check, Env, P256, code, create_aes, data_object, gen_aes, gen_ec, gen_rsa, get_bool, get_bytes,
    name, pin, setup,
};
use crate::ctx::{Ctx, Fail, Target};
use crate::report::Outcome;

/// One rule.
pub(crate) struct Rule {
    /// Stable name (`golden/<name>` in the report).
    pub(crate) name: &'static str,
    /// The codes the specification allows for the probe call.
    pub(crate) accept: &'static [&'static str],
    /// Sets up and makes the probe call; returns its code.
    pub(crate) probe: fn(&Env) -> Check,
}

/// Runs one rule on a fresh token of `target`.
pub(crate) fn check(target: &Target, rule: &Rule) -> Outcome {
    if let Some(m) = crate::ctx::missing_tools(&[]) {
        return Outcome::skip(m);
    }
    let ctx = match Ctx::new(target) {
        Ok(c) => c,
        Err(Fail::Failed(m)) => return Outcome::fail(m),
        Err(Fail::Skipped(m)) => return Outcome::skip(m),
    };
    let got = match ctx.worker_detail(&format!("golden:{}", rule.name)) {
        Ok(code) => code,
        Err(Fail::Failed(m)) => return Outcome::fail(m),
        Err(Fail::Skipped(m)) => return Outcome::skip(m),
    };
    if rule.accept.contains(&got.as_str()) {
        Outcome::pass(got)
    } else {
        Outcome::fail(format!(
            "got {got}, the specification says {}",
            rule.accept.join(" or ")
        ))
    }
}

const ATTR_TYPE_INVALID: &[&str] = &["CKR_ATTRIBUTE_TYPE_INVALID"];
const VALUE_INVALID: &[&str] = &["CKR_ATTRIBUTE_VALUE_INVALID"];
const READ_ONLY: &[&str] = &["CKR_ATTRIBUTE_READ_ONLY"];
const INCOMPLETE: &[&str] = &["CKR_TEMPLATE_INCOMPLETE"];
const INCONSISTENT: &[&str] = &["CKR_TEMPLATE_INCONSISTENT"];
const OK: &[&str] = &["CKR_OK"];
const PROHIBITED: &[&str] = &["CKR_ACTION_PROHIBITED"];

/// Every rule, in report order.
pub(crate) fn rules() -> Vec<Rule> {
    let r = |name, accept, probe| Rule {
        name,
        accept,
        probe,
    };
    vec![
        // Template processing.
        r("template/unknown-attribute-type", ATTR_TYPE_INVALID, |e| {
            let s = e.user()?;
            Ok(code(data_object(
                &s,
                &[Attribute::VendorDefined((
                    AttributeType::VendorDefined(0x0fff),
                    vec![1],
                ))],
            )))
        }),
        r("template/boolean-of-wrong-length", VALUE_INVALID, |e| {
            let s = e.user()?;
            Ok(code(s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::VendorDefined((AttributeType::VendorDefined(0x0001), vec![1, 0, 0, 0])),
            ])))
        }),
        r("template/aes-value-of-wrong-length", VALUE_INVALID, |e| {
            let s = e.user()?;
            Ok(code(create_aes(&s, &[1u8; 7], &[])))
        }),
        r("template/missing-class", INCOMPLETE, |e| {
            let s = e.user()?;
            Ok(code(s.create_object(&[
                Attribute::Token(true),
                Attribute::Value(b"x".to_vec()),
            ])))
        }),
        r("template/secret-key-missing-value", INCOMPLETE, |e| {
            let s = e.user()?;
            Ok(code(s.create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
            ])))
        }),
        r("template/generate-key-type-mismatch", INCONSISTENT, |e| {
            let s = e.user()?;
            Ok(code(s.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::KeyType(KeyType::RSA),
                    Attribute::ValueLen(16.into()),
                ],
            )))
        }),
        r("template/generate-class-mismatch", INCONSISTENT, |e| {
            let s = e.user()?;
            Ok(code(s.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::ValueLen(16.into()),
                ],
            )))
        }),
        r(
            "template/duplicate-identical-attribute",
            &["CKR_OK", "CKR_TEMPLATE_INCONSISTENT"],
            |e| {
                let s = e.user()?;
                Ok(code(data_object(
                    &s,
                    &[
                        Attribute::Application(b"a".to_vec()),
                        Attribute::Application(b"a".to_vec()),
                    ],
                )))
            },
        ),
        r("template/local-is-read-only", READ_ONLY, |e| {
            let s = e.user()?;
            Ok(code(create_aes(&s, &[1u8; 16], &[Attribute::Local(true)])))
        }),
        r("template/key-gen-mechanism-is-read-only", READ_ONLY, |e| {
            let s = e.user()?;
            Ok(code(s.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::ValueLen(16.into()),
                    Attribute::KeyGenMechanism(cryptoki::mechanism::MechanismType::AES_KEY_GEN),
                ],
            )))
        }),
        r("template/always-sensitive-is-read-only", READ_ONLY, |e| {
            let s = e.user()?;
            Ok(code(create_aes(
                &s,
                &[1u8; 16],
                &[Attribute::AlwaysSensitive(true)],
            )))
        }),
        r("template/never-extractable-is-read-only", READ_ONLY, |e| {
            let s = e.user()?;
            Ok(code(s.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::ValueLen(16.into()),
                    Attribute::NeverExtractable(true),
                ],
            )))
        }),
        r("template/unique-id-is-read-only", READ_ONLY, |e| {
            let s = e.user()?;
            Ok(code(data_object(
                &s,
                &[Attribute::UniqueId(b"mine".to_vec())],
            )))
        }),
        r(
            "template/read-only-session-token-object",
            &["CKR_SESSION_READ_ONLY"],
            |e| {
                let s = e.ro()?;
                Ok(code(data_object(&s, &[])))
            },
        ),
        r(
            "template/private-object-without-login",
            &["CKR_USER_NOT_LOGGED_IN"],
            |e| {
                let s = e.rw()?;
                Ok(code(data_object(&s, &[Attribute::Private(true)])))
            },
        ),
        // CKA_SENSITIVE / CKA_EXTRACTABLE: one-way changes.
        r("attr/sensitive-true-to-false", READ_ONLY, |e| {
            let s = e.user()?;
            let k = gen_aes(&s, &[Attribute::Sensitive(true)])?;
            Ok(code(s.update_attributes(k, &[Attribute::Sensitive(false)])))
        }),
        r("attr/sensitive-false-to-true", OK, |e| {
            let s = e.user()?;
            let k = gen_aes(&s, &[Attribute::Sensitive(false)])?;
            Ok(code(s.update_attributes(k, &[Attribute::Sensitive(true)])))
        }),
        r("attr/extractable-false-to-true", READ_ONLY, |e| {
            let s = e.user()?;
            let k = gen_aes(&s, &[Attribute::Extractable(false)])?;
            Ok(code(
                s.update_attributes(k, &[Attribute::Extractable(true)]),
            ))
        }),
        r("attr/extractable-true-to-false", OK, |e| {
            let s = e.user()?;
            let k = gen_aes(&s, &[Attribute::Extractable(true)])?;
            Ok(code(
                s.update_attributes(k, &[Attribute::Extractable(false)]),
            ))
        }),
        r(
            "attr/sensitive-value-not-revealed",
            &["CKR_ATTRIBUTE_SENSITIVE"],
            |e| {
                let s = e.user()?;
                let k = gen_aes(
                    &s,
                    &[Attribute::Sensitive(true), Attribute::Extractable(true)],
                )?;
                value_code(&s, k)
            },
        ),
        r(
            "attr/unextractable-value-not-revealed",
            &["CKR_ATTRIBUTE_SENSITIVE"],
            |e| {
                let s = e.user()?;
                let k = gen_aes(
                    &s,
                    &[Attribute::Sensitive(false), Attribute::Extractable(false)],
                )?;
                value_code(&s, k)
            },
        ),
        r(
            "attr/private-exponent-not-revealed",
            &["CKR_ATTRIBUTE_SENSITIVE"],
            |e| {
                let s = e.user()?;
                let (_p, k) = gen_rsa(&s, &[Attribute::Sensitive(true)])?;
                let info = setup(
                    "C_GetAttributeValue",
                    s.get_attribute_info(k, &[AttributeType::PrivateExponent]),
                )?;
                Ok(match info.first() {
                    Some(AttributeInfo::Sensitive) => "CKR_ATTRIBUTE_SENSITIVE".to_owned(),
                    other => format!("revealed or odd: {other:?}"),
                })
            },
        ),
        // Token-maintained attributes.
        r(
            "attr/generated-always-sensitive-never-extractable",
            OK,
            |e| {
                let s = e.user()?;
                let k = gen_aes(
                    &s,
                    &[Attribute::Sensitive(true), Attribute::Extractable(false)],
                )?;
                let a = get_bool(&s, k, AttributeType::AlwaysSensitive)?;
                let n = get_bool(&s, k, AttributeType::NeverExtractable)?;
                let l = get_bool(&s, k, AttributeType::Local)?;
                Ok(if a && n && l {
                    "CKR_OK".to_owned()
                } else {
                    format!("ALWAYS_SENSITIVE={a} NEVER_EXTRACTABLE={n} LOCAL={l}")
                })
            },
        ),
        r("attr/created-not-always-sensitive-not-local", OK, |e| {
            let s = e.user()?;
            let k = setup(
                "C_CreateObject",
                create_aes(
                    &s,
                    &[1u8; 16],
                    &[Attribute::Sensitive(true), Attribute::Extractable(false)],
                ),
            )?;
            let a = get_bool(&s, k, AttributeType::AlwaysSensitive)?;
            let n = get_bool(&s, k, AttributeType::NeverExtractable)?;
            let l = get_bool(&s, k, AttributeType::Local)?;
            Ok(if !a && !n && !l {
                "CKR_OK".to_owned()
            } else {
                format!("ALWAYS_SENSITIVE={a} NEVER_EXTRACTABLE={n} LOCAL={l}")
            })
        }),
        r("attr/always-sensitive-not-settable", READ_ONLY, |e| {
            let s = e.user()?;
            let k = gen_aes(&s, &[Attribute::Sensitive(true)])?;
            Ok(code(s.update_attributes(
                k,
                &[Attribute::AlwaysSensitive(false)],
            )))
        }),
        r("attr/never-extractable-not-settable", READ_ONLY, |e| {
            let s = e.user()?;
            let k = gen_aes(&s, &[Attribute::Extractable(false)])?;
            Ok(code(s.update_attributes(
                k,
                &[Attribute::NeverExtractable(false)],
            )))
        }),
        r("attr/local-not-settable", READ_ONLY, |e| {
            let s = e.user()?;
            let k = gen_aes(&s, &[])?;
            Ok(code(s.update_attributes(k, &[Attribute::Local(false)])))
        }),
        // Wrapping.
        r(
            "wrap/unextractable-target",
            &["CKR_KEY_UNEXTRACTABLE"],
            |e| {
                let s = e.user()?;
                let kek = gen_aes(&s, &[Attribute::Wrap(true)])?;
                let t = gen_aes(&s, &[Attribute::Extractable(false)])?;
                Ok(code(s.wrap_key(&Mechanism::AesKeyWrap, kek, t)))
            },
        ),
        r(
            "wrap/wrapping-key-without-cka-wrap",
            &["CKR_KEY_FUNCTION_NOT_PERMITTED"],
            |e| {
                let s = e.user()?;
                let kek = gen_aes(&s, &[Attribute::Wrap(false)])?;
                let t = gen_aes(&s, &[Attribute::Extractable(true)])?;
                Ok(code(s.wrap_key(&Mechanism::AesKeyWrap, kek, t)))
            },
        ),
        r(
            "wrap/with-trusted-needs-trusted-wrapper",
            &[
                "CKR_KEY_NOT_WRAPPABLE",
                "CKR_WRAPPING_KEY_HANDLE_INVALID",
                "CKR_KEY_FUNCTION_NOT_PERMITTED",
            ],
            |e| {
                let s = e.user()?;
                let kek = gen_aes(&s, &[Attribute::Wrap(true)])?;
                let t = gen_aes(
                    &s,
                    &[
                        Attribute::Extractable(true),
                        Attribute::WrapWithTrusted(true),
                    ],
                )?;
                Ok(code(s.wrap_key(&Mechanism::AesKeyWrap, kek, t)))
            },
        ),
        r("attr/wrap-with-trusted-true-to-false", READ_ONLY, |e| {
            let s = e.user()?;
            let k = gen_aes(&s, &[Attribute::WrapWithTrusted(true)])?;
            Ok(code(s.update_attributes(
                k,
                &[Attribute::WrapWithTrusted(false)],
            )))
        }),
        r("attr/trusted-set-by-user", READ_ONLY, |e| {
            let s = e.user()?;
            Ok(code(create_aes(
                &s,
                &[1u8; 16],
                &[Attribute::Trusted(true), Attribute::Wrap(true)],
            )))
        }),
        r("wrap/trusted-wrapper-set-by-so-wraps", OK, |e| {
            // The SO marks a (public) wrapping key trusted; the user then wraps a
            // wrap-with-trusted key with it. Public, so said not protected (extractable, not
            // sensitive): a protected key is always private, and a real module's defaults
            // (SoftHSM: not extractable) would make it one.
            let so = e.rw()?;
            setup(
                "C_Login(SO)",
                so.login(
                    UserType::So,
                    Some(&cryptoki::types::AuthPin::from(
                        crate::ctx::SO_PIN.to_owned(),
                    )),
                ),
            )?;
            setup(
                "C_CreateObject",
                create_aes(
                    &so,
                    &[3u8; 16],
                    &[
                        Attribute::Trusted(true),
                        Attribute::Wrap(true),
                        Attribute::Private(false),
                        Attribute::Sensitive(false),
                        Attribute::Extractable(true),
                        Attribute::Label(b"trusted-kek".to_vec()),
                    ],
                ),
            )?;
            setup("C_Logout", so.logout())?;
            drop(so);
            let s = e.user()?;
            // Handles are only stable within a session: find the key again.
            let kek = *setup(
                "C_FindObjects",
                s.find_objects(&[Attribute::Label(b"trusted-kek".to_vec())]),
            )?
            .first()
            .ok_or("the SO's key is not visible to the user")?;
            let t = gen_aes(
                &s,
                &[
                    Attribute::Extractable(true),
                    Attribute::WrapWithTrusted(true),
                ],
            )?;
            Ok(code(s.wrap_key(&Mechanism::AesKeyWrap, kek, t)))
        }),
        // Derived keys (ECDH: the template chooses; the token-maintained flags record it).
        r("derive/ecdh-protected-secret-keeps-provenance", OK, |e| {
            let s = e.user()?;
            let (p, k) = gen_ec(&s, &[Attribute::Derive(true)])?;
            let z = ecdh(&s, p, k, true)?;
            let a = get_bool(&s, z, AttributeType::AlwaysSensitive)?;
            let n = get_bool(&s, z, AttributeType::NeverExtractable)?;
            Ok(if a && n {
                "CKR_OK".to_owned()
            } else {
                format!("ALWAYS_SENSITIVE={a} NEVER_EXTRACTABLE={n}")
            })
        }),
        r(
            "derive/ecdh-loose-secret-is-not-always-sensitive",
            OK,
            |e| {
                let s = e.user()?;
                let (p, k) = gen_ec(&s, &[Attribute::Derive(true)])?;
                let z = ecdh(&s, p, k, false)?;
                let a = get_bool(&s, z, AttributeType::AlwaysSensitive)?;
                let n = get_bool(&s, z, AttributeType::NeverExtractable)?;
                Ok(if !a && !n {
                    "CKR_OK".to_owned()
                } else {
                    format!("ALWAYS_SENSITIVE={a} NEVER_EXTRACTABLE={n}")
                })
            },
        ),
        // Object-level permissions.
        r("attr/modifiable-false-refuses-set", PROHIBITED, |e| {
            let s = e.user()?;
            let o = setup(
                "C_CreateObject",
                data_object(&s, &[Attribute::Modifiable(false)]),
            )?;
            Ok(code(s.update_attributes(
                o,
                &[Attribute::Label(b"new".to_vec())],
            )))
        }),
        r("attr/copyable-false-refuses-copy", PROHIBITED, |e| {
            let s = e.user()?;
            let o = setup(
                "C_CreateObject",
                data_object(&s, &[Attribute::Copyable(false)]),
            )?;
            Ok(code(s.copy_object(o, &[])))
        }),
        r("attr/copyable-false-to-true", READ_ONLY, |e| {
            let s = e.user()?;
            let o = setup(
                "C_CreateObject",
                data_object(&s, &[Attribute::Copyable(false)]),
            )?;
            Ok(code(s.update_attributes(o, &[Attribute::Copyable(true)])))
        }),
        r("attr/destroyable-false-refuses-destroy", PROHIBITED, |e| {
            let s = e.user()?;
            let o = setup(
                "C_CreateObject",
                data_object(&s, &[Attribute::Destroyable(false)]),
            )?;
            Ok(code(s.destroy_object(o)))
        }),
        r("attr/token-not-settable", READ_ONLY, |e| {
            let s = e.user()?;
            let o = setup("C_CreateObject", data_object(&s, &[]))?;
            Ok(code(s.update_attributes(o, &[Attribute::Token(false)])))
        }),
        r("attr/private-not-settable", READ_ONLY, |e| {
            let s = e.user()?;
            let o = setup(
                "C_CreateObject",
                data_object(&s, &[Attribute::Private(false)]),
            )?;
            Ok(code(s.update_attributes(o, &[Attribute::Private(true)])))
        }),
        r("attr/copy-may-change-token", OK, |e| {
            let s = e.user()?;
            let o = setup("C_CreateObject", data_object(&s, &[]))?;
            Ok(code(s.copy_object(o, &[Attribute::Token(false)])))
        }),
        r("attr/label-modifiable", OK, |e| {
            let s = e.user()?;
            let o = setup("C_CreateObject", data_object(&s, &[]))?;
            Ok(code(s.update_attributes(
                o,
                &[Attribute::Label(b"renamed".to_vec())],
            )))
        }),
        r("attr/private-invisible-before-login", OK, |e| {
            let s = e.user()?;
            setup(
                "C_CreateObject",
                data_object(
                    &s,
                    &[
                        Attribute::Private(true),
                        Attribute::Label(b"hidden".to_vec()),
                    ],
                ),
            )?;
            // (data_object lets these replace its defaults: no attribute appears twice.)
            setup("C_Logout", s.logout())?;
            let found = setup(
                "C_FindObjects",
                s.find_objects(&[Attribute::Label(b"hidden".to_vec())]),
            )?;
            Ok(if found.is_empty() {
                "CKR_OK".to_owned()
            } else {
                "private object found before login".to_owned()
            })
        }),
        r(
            "attr/private-key-unusable-before-login",
            &[
                "CKR_USER_NOT_LOGGED_IN",
                "CKR_KEY_HANDLE_INVALID",
                "CKR_OBJECT_HANDLE_INVALID",
            ],
            |e| {
                let s = e.user()?;
                let (_p, k) = gen_ec(&s, &[Attribute::Private(true)])?;
                setup("C_Logout", s.logout())?;
                Ok(code(s.sign(&Mechanism::Ecdsa, k, &[7u8; 32])))
            },
        ),
        r("attr/unique-id-not-settable", READ_ONLY, |e| {
            let s = e.user()?;
            let o = setup("C_CreateObject", data_object(&s, &[]))?;
            Ok(code(s.update_attributes(
                o,
                &[Attribute::UniqueId(b"x".to_vec())],
            )))
        }),
        r("attr/unique-id-new-on-copy", OK, |e| {
            let s = e.user()?;
            let o = setup("C_CreateObject", data_object(&s, &[]))?;
            let c = setup("C_CopyObject", s.copy_object(o, &[]))?;
            let (a, b) = (
                get_bytes(&s, o, AttributeType::UniqueId)?,
                get_bytes(&s, c, AttributeType::UniqueId)?,
            );
            Ok(if !a.is_empty() && a != b {
                "CKR_OK".to_owned()
            } else {
                "the copy kept the unique id".to_owned()
            })
        }),
        // Authentication per use.
        r(
            "always-authenticate/missing-context-login",
            &["CKR_USER_NOT_LOGGED_IN"],
            |e| {
                let s = e.user()?;
                let (_p, k) = gen_rsa(
                    &s,
                    &[
                        Attribute::AlwaysAuthenticate(true),
                        Attribute::Private(true),
                    ],
                )?;
                setup("C_SignInit", s.sign_init(&Mechanism::Sha256RsaPkcs, k))?;
                Ok(code(s.sign_update(b"abc").and_then(|()| s.sign_final())))
            },
        ),
        r("always-authenticate/context-login-then-sign", OK, |e| {
            let s = e.user()?;
            let (_p, k) = gen_rsa(
                &s,
                &[
                    Attribute::AlwaysAuthenticate(true),
                    Attribute::Private(true),
                ],
            )?;
            setup("C_SignInit", s.sign_init(&Mechanism::Sha256RsaPkcs, k))?;
            setup(
                "C_Login(CONTEXT_SPECIFIC)",
                s.login(UserType::ContextSpecific, Some(&pin())),
            )?;
            Ok(code(s.sign_update(b"abc").and_then(|()| s.sign_final())))
        }),
        r(
            "always-authenticate/context-login-not-required",
            &["CKR_OPERATION_NOT_INITIALIZED"],
            |e| {
                let s = e.user()?;
                let (_p, k) = gen_rsa(&s, &[])?;
                setup("C_SignInit", s.sign_init(&Mechanism::Sha256RsaPkcs, k))?;
                Ok(code(s.login(UserType::ContextSpecific, Some(&pin()))))
            },
        ),
        // Usage.
        r(
            "usage/mechanism-not-allowed",
            &["CKR_MECHANISM_INVALID"],
            |e| {
                let s = e.user()?;
                let (_p, k) = gen_ec(
                    &s,
                    &[Attribute::AllowedMechanisms(vec![
                        cryptoki::mechanism::MechanismType::ECDSA_SHA256,
                    ])],
                )?;
                Ok(code(s.sign(&Mechanism::Ecdsa, k, &[7u8; 32])))
            },
        ),
        r(
            "usage/sign-false",
            &["CKR_KEY_FUNCTION_NOT_PERMITTED"],
            |e| {
                let s = e.user()?;
                let (_p, k) = gen_ec(&s, &[Attribute::Sign(false), Attribute::Derive(true)])?;
                Ok(code(s.sign(&Mechanism::Ecdsa, k, &[7u8; 32])))
            },
        ),
        r(
            "usage/key-type-inconsistent",
            &["CKR_KEY_TYPE_INCONSISTENT"],
            |e| {
                let s = e.user()?;
                let (_p, k) = gen_rsa(&s, &[])?;
                Ok(code(s.sign(&Mechanism::Ecdsa, k, &[7u8; 32])))
            },
        ),
        r(
            "usage/encrypt-false",
            &["CKR_KEY_FUNCTION_NOT_PERMITTED"],
            |e| {
                let s = e.user()?;
                let k = gen_aes(&s, &[Attribute::Encrypt(false)])?;
                Ok(code(s.encrypt(&Mechanism::AesCbcPad([0; 16]), k, b"abc")))
            },
        ),
        // Consistency checks on supplied values.
        r(
            "attr/public-key-info-mismatch",
            &["CKR_ATTRIBUTE_VALUE_INVALID", "CKR_TEMPLATE_INCONSISTENT"],
            |e| {
                let s = e.user()?;
                let (p, _k) = gen_ec(&s, &[])?;
                let point = get_bytes(&s, p, AttributeType::EcPoint)?;
                Ok(code(s.create_object(&[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::KeyType(KeyType::EC),
                    Attribute::EcParams(P256.to_vec()),
                    Attribute::EcPoint(point),
                    Attribute::PublicKeyInfo(vec![0x30, 0x03, 0x02, 0x01, 0x00]),
                ])))
            },
        ),
        r("attr/check-value-mismatch", VALUE_INVALID, |e| {
            let s = e.user()?;
            Ok(code(create_aes(
                &s,
                &[1u8; 16],
                &[Attribute::CheckValue(vec![0, 0, 0])],
            )))
        }),
        r(
            "digest-key/sensitive-key",
            &["CKR_KEY_INDIGESTIBLE", "CKR_OK"],
            |e| {
                let s = e.user()?;
                let k = gen_aes(&s, &[Attribute::Sensitive(true)])?;
                setup("C_DigestInit", s.digest_init(&Mechanism::Sha256))?;
                Ok(code(s.digest_key(k)))
            },
        ),
    ]
}

/// The code `C_GetAttributeValue` gives for `CKA_VALUE` of `k`, as seen through the client.
fn value_code(s: &cryptoki::session::Session, k: cryptoki::object::ObjectHandle) -> Check {
    let info = s
        .get_attribute_info(k, &[AttributeType::Value])
        .map_err(|e| format!("C_GetAttributeValue: {}", name(&e)))?;
    Ok(match info.first() {
        Some(AttributeInfo::Sensitive) => "CKR_ATTRIBUTE_SENSITIVE".to_owned(),
        Some(AttributeInfo::Available(_)) => "CKR_OK (value revealed)".to_owned(),
        other => format!("{other:?}"),
    })
}

/// An ECDH secret (null KDF, the key pair's own public point as the peer) with
/// SENSITIVE=`protect`, EXTRACTABLE=`!protect`.
fn ecdh(
    s: &cryptoki::session::Session,
    public: cryptoki::object::ObjectHandle,
    private: cryptoki::object::ObjectHandle,
    protect: bool,
) -> Result<cryptoki::object::ObjectHandle, String> {
    let point_der = get_bytes(s, public, AttributeType::EcPoint)?;
    // CKA_EC_POINT is a DER OCTET STRING; the mechanism takes the raw point.
    let point =
        der::asn1::OctetStringRef::from_der(&point_der).map_or(&point_der[..], |o| o.as_bytes());
    let params = cryptoki::mechanism::elliptic_curve::Ecdh1DeriveParams::new(
        cryptoki::mechanism::elliptic_curve::EcKdf::null(),
        point,
    );
    setup(
        "C_DeriveKey",
        s.derive_key(
            &Mechanism::Ecdh1Derive(params),
            private,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Sensitive(protect),
                Attribute::Extractable(!protect),
            ],
        ),
    )
}
