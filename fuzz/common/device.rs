// The simulated firmware the fuzz targets drive: one initialized token in a temporary home,
// a read-write session logged in as the user, and a few session keys to use mechanisms on.
// Included by the targets with `include!` (each target is its own crate root).

use std::sync::OnceLock;

use bridge::config::FirmwareConfig;
use bridge::{Attribute, BackendExt, Mechanism, ObjectHandle, SessionHandle, SlotId, Template};
use cryptoki_sys::*;
use firmware_sim::Device;

#[allow(dead_code)]
struct Fixture {
    _home: tempfile::TempDir,
    device: Device,
    session: SessionHandle,
    aes: ObjectHandle,
    ec: ObjectHandle,
    ec_pub: ObjectHandle,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let home = tempfile::tempdir().expect("temporary home");
        let config = FirmwareConfig {
            pin_kdf_iterations: 1,
            ..FirmwareConfig::default()
        };
        let device = Device::open_home(home.path(), &config).expect("device");
        let mut label = [b' '; 32];
        label[..4].copy_from_slice(b"fuzz");
        device.init_token(SlotId(0), b"12345678", &label).expect("init token");
        let s = device
            .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .expect("session");
        device.login(s, CKU_SO, Some(b"12345678")).expect("SO login");
        device.init_pin(s, b"87654321").expect("init PIN");
        device.logout(s).expect("logout");
        device.login(s, CKU_USER, Some(b"87654321")).expect("user login");
        let aes = device
            .generate_key(
                s,
                &Mechanism::new(CKM_AES_KEY_GEN),
                &Template::new()
                    .with(Attribute::ulong(CKA_VALUE_LEN, 32))
                    .with(Attribute::bool(CKA_DERIVE, true))
                    .with(Attribute::bool(CKA_WRAP, true))
                    .with(Attribute::bool(CKA_UNWRAP, true)),
            )
            .expect("AES key");
        // P-256 (OID 1.2.840.10045.3.1.7).
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let (ec_pub, ec) = device
            .generate_key_pair(
                s,
                &Mechanism::new(CKM_EC_KEY_PAIR_GEN),
                &Template::new().with(Attribute::bytes(CKA_EC_PARAMS, p256.to_vec())),
                &Template::new().with(Attribute::bool(CKA_DERIVE, true)),
            )
            .expect("EC key pair");
        Fixture {
            _home: home,
            device,
            session: s,
            aes,
            ec,
            ec_pub,
        }
    })
}
