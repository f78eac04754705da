/*
 * A stand-in for ncrypt.dll on Linux: loads the key storage provider with dlopen, asks
 * GetKeyStorageInterface for its function table and calls the table the way the Windows
 * router does (provider handle first, size probes with a NULL buffer, FreeBuffer for what the
 * provider allocates). Built against include/ferrohsm_ksp.h by tests/tests/ksp.rs.
 *
 * usage: ksp_host LIB COMMAND DIR [ARG]
 *   create  DIR       RSA-3072 "ksp-rsa" and P-256 "ksp-p256": finalize, export the public
 *                     blobs, sign DIR/hash (PKCS#1, PSS, ECDSA), check the refusals
 *   decrypt DIR       DIR/oaep.ct -> DIR/oaep.pt and DIR/pkcs1.ct -> DIR/pkcs1.pt (ksp-rsa)
 *   sign    DIR NAME  ECDSA over DIR/hash with the key named NAME -> DIR/NAME.sig
 *   handles DIR       stale, wrong-kind and NULL handles, buffers, flags, enumeration
 *   ecdh    DIR       two ECDH P-256 keys agree (HASH, HMAC, TRUNCATE)
 *   pkcs8   DIR       DIR/import.p8 (an RSA key) imported as "p8-rsa"; signs DIR/hash
 *                     (PKCS#1) -> DIR/p8.sig
 *   byok-kek DIR      RSA-3072 "ksp-kek" -> DIR/kek.blob
 *   byok-import DIR   DIR/byok.blob (PKCS11RsaAesWrapBlob) under ksp-kek -> "byok-ec";
 *                     signs DIR/hash -> DIR/byok.sig
 * Prints "check NAME ok|FAIL ..." lines and "N failures"; exits 1 on any failure.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferrohsm_ksp.h"

#define W(s) ((LPCWSTR)u##s)
#define ERROR_SUCCESS_ 0

static NCRYPT_KEY_STORAGE_FUNCTION_TABLE *T;
static int failures;
static const char *dir;

static void check(const char *name, SECURITY_STATUS got, SECURITY_STATUS want) {
    if (got == want) {
        printf("check %s ok\n", name);
    } else {
        printf("check %s FAIL: got 0x%08x want 0x%08x\n", name, (unsigned)got, (unsigned)want);
        failures++;
    }
}

static void truth(const char *name, int ok) {
    printf("check %s %s\n", name, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

static char *path(const char *file) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", dir, file);
    return buf;
}

static void write_file(const char *file, const uint8_t *data, DWORD len) {
    FILE *f = fopen(path(file), "wb");
    if (!f || fwrite(data, 1, len, f) != len) { perror(file); exit(2); }
    fclose(f);
}

static DWORD read_file(const char *file, uint8_t *buf, DWORD cap) {
    FILE *f = fopen(path(file), "rb");
    if (!f) { perror(file); exit(2); }
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return (DWORD)n;
}

static NCRYPT_PROV_HANDLE open_provider(void) {
    NCRYPT_PROV_HANDLE hp = 0;
    check("OpenProvider", T->OpenProvider(&hp, W("FerroHSM Key Storage Provider"), 0), 0);
    return hp;
}

static void set_dword(NCRYPT_PROV_HANDLE hp, NCRYPT_KEY_HANDLE hk, LPCWSTR prop, DWORD v,
                      const char *name) {
    check(name, T->SetKeyProperty(hp, hk, prop, (uint8_t *)&v, sizeof v, 0), 0);
}

static DWORD get_dword(NCRYPT_PROV_HANDLE hp, NCRYPT_KEY_HANDLE hk, LPCWSTR prop) {
    DWORD v = 0, n = 0;
    SECURITY_STATUS s = T->GetKeyProperty(hp, hk, prop, (uint8_t *)&v, sizeof v, &n, 0);
    if (s != 0 || n != 4) { printf("GetKeyProperty dword: 0x%08x\n", (unsigned)s); failures++; }
    return v;
}

/* A UTF-16 property compared with an ASCII string. */
static int prop_is(NCRYPT_PROV_HANDLE hp, NCRYPT_KEY_HANDLE hk, LPCWSTR prop, const char *want) {
    uint16_t buf[256];
    DWORD n = 0;
    if (T->GetKeyProperty(hp, hk, prop, NULL, 0, &n, 0) != 0) return 0;
    if (n != 2 * (strlen(want) + 1)) return 0;
    if (T->GetKeyProperty(hp, hk, prop, (uint8_t *)buf, sizeof buf, &n, 0) != 0) return 0;
    for (size_t i = 0; i <= strlen(want); i++)
        if (buf[i] != (uint16_t)(unsigned char)want[i]) return 0;
    return 1;
}

static NCRYPT_KEY_HANDLE create(NCRYPT_PROV_HANDLE hp, LPCWSTR alg, LPCWSTR name, DWORD bits,
                                const char *what) {
    NCRYPT_KEY_HANDLE hk = 0;
    char label[128];
    snprintf(label, sizeof label, "CreatePersistedKey %s", what);
    check(label, T->CreatePersistedKey(hp, &hk, alg, name, 0, NCRYPT_OVERWRITE_KEY_FLAG), 0);
    if (bits) set_dword(hp, hk, W("Length"), bits, "SetKeyProperty Length");
    set_dword(hp, hk, W("Export Policy"), 0, "SetKeyProperty Export Policy");
    snprintf(label, sizeof label, "FinalizeKey %s", what);
    check(label, T->FinalizeKey(hp, hk, 0), 0);
    check("FinalizeKey twice", T->FinalizeKey(hp, hk, 0), NTE_BAD_KEY_STATE);
    return hk;
}

static void export_public(NCRYPT_PROV_HANDLE hp, NCRYPT_KEY_HANDLE hk, LPCWSTR type,
                          const char *file) {
    uint8_t buf[2048];
    DWORD probe = 0, n = 0;
    check("ExportKey probe", T->ExportKey(hp, hk, 0, type, NULL, NULL, 0, &probe, 0), 0);
    check("ExportKey short", T->ExportKey(hp, hk, 0, type, NULL, buf, 4, &n, 0),
          NTE_BUFFER_TOO_SMALL);
    truth("ExportKey short reports the size", n == probe);
    check("ExportKey", T->ExportKey(hp, hk, 0, type, NULL, buf, sizeof buf, &n, 0), 0);
    truth("ExportKey size matches the probe", n == probe);
    write_file(file, buf, n);
}

static void sign(NCRYPT_PROV_HANDLE hp, NCRYPT_KEY_HANDLE hk, void *pad, DWORD flags,
                 const uint8_t *hash, DWORD hlen, const char *file, DWORD want_size) {
    uint8_t sig[1024];
    DWORD probe = 0, n = 0;
    check("SignHash probe", T->SignHash(hp, hk, pad, (uint8_t *)hash, hlen, NULL, 0, &probe, flags), 0);
    truth("SignHash probe size", probe == want_size);
    check("SignHash", T->SignHash(hp, hk, pad, (uint8_t *)hash, hlen, sig, sizeof sig, &n, flags), 0);
    truth("SignHash size", n == want_size);
    check("VerifySignature", T->VerifySignature(hp, hk, pad, (uint8_t *)hash, hlen, sig, n, flags), 0);
    sig[n / 2] ^= 1;
    check("VerifySignature tampered",
          T->VerifySignature(hp, hk, pad, (uint8_t *)hash, hlen, sig, n, flags), NTE_BAD_SIGNATURE);
    sig[n / 2] ^= 1;
    write_file(file, sig, n);
}

static void cmd_create(void) {
    uint8_t hash[32];
    if (read_file("hash", hash, sizeof hash) != 32) { fprintf(stderr, "hash\n"); exit(2); }
    NCRYPT_PROV_HANDLE hp = open_provider();
    NCRYPT_KEY_HANDLE rsa = create(hp, W("RSA"), W("ksp-rsa"), 3072, "RSA-3072");
    NCRYPT_KEY_HANDLE ec = create(hp, W("ECDSA_P256"), W("ksp-p256"), 0, "P-256");

    truth("Name", prop_is(hp, rsa, W("Name"), "ksp-rsa"));
    truth("Algorithm Name", prop_is(hp, ec, W("Algorithm Name"), "ECDSA_P256"));
    truth("Algorithm Group", prop_is(hp, rsa, W("Algorithm Group"), "RSA"));
    truth("Length RSA", get_dword(hp, rsa, W("Length")) == 3072);
    truth("Length P-256", get_dword(hp, ec, W("Length")) == 256);
    truth("Export Policy", get_dword(hp, rsa, W("Export Policy")) == 0);
    truth("Key Usage", get_dword(hp, ec, W("Key Usage")) == 2 /* signing */);
    {
        NCRYPT_SUPPORTED_LENGTHS l;
        DWORD n = 0;
        check("Lengths", T->GetKeyProperty(hp, rsa, W("Lengths"), (uint8_t *)&l, sizeof l, &n, 0), 0);
        truth("Lengths values", n == sizeof l && l.dwMinLength <= 3072 && l.dwMaxLength >= 3072);
        uint8_t u[256];
        check("Unique Name", T->GetKeyProperty(hp, rsa, W("Unique Name"), u, sizeof u, &n, 0), 0);
    }
    check("SetKeyProperty after finalize",
          T->SetKeyProperty(hp, rsa, W("Export Policy"), (uint8_t *)&(DWORD){3}, 4, 0), NTE_PERM);

    export_public(hp, rsa, W("RSAPUBLICBLOB"), "rsa.blob");
    export_public(hp, ec, W("ECCPUBLICBLOB"), "ec.blob");
    check("ExportKey RSA blob from an EC key",
          T->ExportKey(hp, ec, 0, W("RSAPUBLICBLOB"), NULL, NULL, 0, &(DWORD){0}, 0), NTE_BAD_TYPE);

    BCRYPT_PKCS1_PADDING_INFO pkcs1 = { W("SHA256") };
    BCRYPT_PSS_PADDING_INFO pss = { W("SHA256"), 32 };
    sign(hp, rsa, &pkcs1, BCRYPT_PAD_PKCS1, hash, 32, "rsa-pkcs1.sig", 384);
    sign(hp, rsa, &pss, BCRYPT_PAD_PSS, hash, 32, "rsa-pss.sig", 384);
    sign(hp, ec, NULL, 0, hash, 32, "ec.sig", 64);
    check("SignHash PKCS1 wrong hash length",
          T->SignHash(hp, rsa, &pkcs1, hash, 20, NULL, 0, &(DWORD){0}, BCRYPT_PAD_PKCS1),
          NTE_INVALID_PARAMETER);
    {
        uint8_t sig[512];
        DWORD n = 0;
        check("SignHash short buffer",
              T->SignHash(hp, rsa, &pkcs1, hash, 32, sig, 100, &n, BCRYPT_PAD_PKCS1),
              NTE_BUFFER_TOO_SMALL);
        truth("SignHash short buffer reports the size", n == 384);
    }

    /* The firmware's export check refuses plaintext export of a non-exportable key. */
    DWORD n = 0;
    uint8_t big[4096];
    check("ExportKey RSAPRIVATEBLOB non-exportable",
          T->ExportKey(hp, rsa, 0, W("RSAPRIVATEBLOB"), NULL, big, sizeof big, &n, 0),
          NTE_NOT_SUPPORTED);
    check("ExportKey RSAFULLPRIVATEBLOB non-exportable",
          T->ExportKey(hp, rsa, 0, W("RSAFULLPRIVATEBLOB"), NULL, NULL, 0, &n, 0),
          NTE_NOT_SUPPORTED);
    check("ExportKey ECCPRIVATEBLOB non-exportable",
          T->ExportKey(hp, ec, 0, W("ECCPRIVATEBLOB"), NULL, big, sizeof big, &n, 0),
          NTE_NOT_SUPPORTED);

    /* An exportable key exports (through the same check) and imports back. */
    NCRYPT_KEY_HANDLE hx = 0;
    check("CreatePersistedKey exportable",
          T->CreatePersistedKey(hp, &hx, W("ECDSA_P256"), NULL, 0, 0), 0);
    set_dword(hp, hx, W("Export Policy"), NCRYPT_ALLOW_EXPORT_FLAG | NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG,
              "SetKeyProperty exportable");
    check("FinalizeKey exportable", T->FinalizeKey(hp, hx, 0), 0);
    check("ExportKey ECCPRIVATEBLOB exportable",
          T->ExportKey(hp, hx, 0, W("ECCPRIVATEBLOB"), NULL, big, sizeof big, &n, 0), 0);
    truth("ECCPRIVATEBLOB size", n == 8 + 3 * 32);
    NCRYPT_KEY_HANDLE hi = 0;
    check("ImportKey ECCPRIVATEBLOB",
          T->ImportKey(hp, 0, W("ECCPRIVATEBLOB"), NULL, &hi, big, n, 0), 0);
    {
        uint8_t sig[64];
        DWORD m = 0;
        check("SignHash imported", T->SignHash(hp, hi, NULL, hash, 32, sig, sizeof sig, &m, 0), 0);
        check("VerifySignature by the original",
              T->VerifySignature(hp, hx, NULL, hash, 32, sig, m, 0), 0);
    }
    check("FreeKey imported", T->FreeKey(hp, hi), 0);
    check("ExportKey PKCS8 exportable",
          T->ExportKey(hp, hx, 0, W("PKCS8_PRIVATEKEY"), NULL, big, sizeof big, &n, 0), 0);
    write_file("exported.p8", big, n);
    check("ImportKey PKCS8",
          T->ImportKey(hp, 0, W("PKCS8_PRIVATEKEY"), NULL, &hi, big, n, 0), 0);
    {
        uint8_t sig[64];
        DWORD m = 0;
        check("SignHash PKCS8-imported", T->SignHash(hp, hi, NULL, hash, 32, sig, sizeof sig, &m, 0), 0);
        check("VerifySignature by the original (PKCS8)",
              T->VerifySignature(hp, hx, NULL, hash, 32, sig, m, 0), 0);
    }
    check("FreeKey PKCS8-imported", T->FreeKey(hp, hi), 0);
    {
        /* An exportable RSA key: RSAPRIVATEBLOB out (n, e, p, q) and back in. */
        NCRYPT_KEY_HANDLE hr = 0, hri = 0;
        check("CreatePersistedKey exportable RSA",
              T->CreatePersistedKey(hp, &hr, W("RSA"), NULL, 0, 0), 0);
        set_dword(hp, hr, W("Export Policy"), NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG,
                  "SetKeyProperty exportable RSA");
        check("FinalizeKey exportable RSA", T->FinalizeKey(hp, hr, 0), 0);
        check("ExportKey RSAPRIVATEBLOB",
              T->ExportKey(hp, hr, 0, W("RSAPRIVATEBLOB"), NULL, big, sizeof big, &n, 0), 0);
        check("ImportKey RSAPRIVATEBLOB",
              T->ImportKey(hp, 0, W("RSAPRIVATEBLOB"), NULL, &hri, big, n, 0), 0);
        uint8_t sig[256];
        DWORD m = 0;
        check("SignHash RSAPRIVATEBLOB-imported",
              T->SignHash(hp, hri, &pkcs1, hash, 32, sig, sizeof sig, &m, BCRYPT_PAD_PKCS1), 0);
        check("VerifySignature by the original (RSAPRIVATEBLOB)",
              T->VerifySignature(hp, hr, &pkcs1, hash, 32, sig, m, BCRYPT_PAD_PKCS1), 0);
        check("ExportKey RSAFULLPRIVATEBLOB",
              T->ExportKey(hp, hr, 0, W("RSAFULLPRIVATEBLOB"), NULL, big, sizeof big, &n, 0), 0);
        check("FreeKey RSAPRIVATEBLOB-imported", T->FreeKey(hp, hri), 0);
        check("ImportKey RSAFULLPRIVATEBLOB",
              T->ImportKey(hp, 0, W("RSAFULLPRIVATEBLOB"), NULL, &hri, big, n, 0), 0);
        check("SignHash RSAFULLPRIVATEBLOB-imported",
              T->SignHash(hp, hri, &pkcs1, hash, 32, sig, sizeof sig, &m, BCRYPT_PAD_PKCS1), 0);
        check("VerifySignature by the original (RSAFULLPRIVATEBLOB)",
              T->VerifySignature(hp, hr, &pkcs1, hash, 32, sig, m, BCRYPT_PAD_PKCS1), 0);
        check("FreeKey RSAFULLPRIVATEBLOB-imported", T->FreeKey(hp, hri), 0);
        check("DeleteKey exportable RSA", T->DeleteKey(hp, hr, 0), 0);
        check("DeleteKey frees the handle", T->FreeKey(hp, hr), NTE_INVALID_HANDLE);
    }
    check("ExportKey PKCS8 non-exportable",
          T->ExportKey(hp, rsa, 0, W("PKCS8_PRIVATEKEY"), NULL, big, sizeof big, &n, 0),
          NTE_NOT_SUPPORTED);
    check("ExportKey ECCPUBLICBLOB exportable",
          T->ExportKey(hp, hx, 0, W("ECCPUBLICBLOB"), NULL, big, sizeof big, &n, 0), 0);
    write_file("exported.blob", big, n);
    check("FreeKey exportable", T->FreeKey(hp, hx), 0);
    check("FreeKey rsa", T->FreeKey(hp, rsa), 0);
    check("FreeKey ec", T->FreeKey(hp, ec), 0);
    check("FreeProvider", T->FreeProvider(hp), 0);
}

static void cmd_decrypt(void) {
    uint8_t ct[1024], pt[1024];
    NCRYPT_PROV_HANDLE hp = open_provider();
    NCRYPT_KEY_HANDLE hk = 0;
    check("OpenKey ksp-rsa", T->OpenKey(hp, &hk, W("ksp-rsa"), 0, 0), 0);
    DWORD len = read_file("oaep.ct", ct, sizeof ct), n = 0;
    BCRYPT_OAEP_PADDING_INFO oaep = { W("SHA256"), NULL, 0 };
    check("Decrypt probe", T->Decrypt(hp, hk, ct, len, &oaep, NULL, 0, &n, BCRYPT_PAD_OAEP), 0);
    truth("Decrypt probe size", n == 384);
    check("Decrypt OAEP", T->Decrypt(hp, hk, ct, len, &oaep, pt, sizeof pt, &n, BCRYPT_PAD_OAEP), 0);
    write_file("oaep.pt", pt, n);
    len = read_file("oaepl.ct", ct, sizeof ct);
    BCRYPT_OAEP_PADDING_INFO oaepl = { W("SHA256"), (uint8_t *)"label", 5 };
    check("Decrypt OAEP with label",
          T->Decrypt(hp, hk, ct, len, &oaepl, pt, sizeof pt, &n, BCRYPT_PAD_OAEP), 0);
    write_file("oaepl.pt", pt, n);
    check("Decrypt OAEP wrong label",
          T->Decrypt(hp, hk, ct, len, &oaep, pt, sizeof pt, &n, BCRYPT_PAD_OAEP),
          NTE_DECRYPTION_FAILURE);
    len = read_file("pkcs1.ct", ct, sizeof ct);
    check("Decrypt PKCS1", T->Decrypt(hp, hk, ct, len, NULL, pt, sizeof pt, &n, BCRYPT_PAD_PKCS1), 0);
    write_file("pkcs1.pt", pt, n);
    /* Encrypt with the public half and decrypt again. */
    uint8_t msg[] = "round trip";
    check("Encrypt OAEP", T->Encrypt(hp, hk, msg, sizeof msg, &oaep, ct, sizeof ct, &n, BCRYPT_PAD_OAEP), 0);
    DWORD m = 0;
    check("Decrypt own OAEP", T->Decrypt(hp, hk, ct, n, &oaep, pt, sizeof pt, &m, BCRYPT_PAD_OAEP), 0);
    truth("round trip", m == sizeof msg && memcmp(pt, msg, m) == 0);
    check("FreeKey", T->FreeKey(hp, hk), 0);
    check("FreeProvider", T->FreeProvider(hp), 0);
}

static void cmd_sign(const char *name) {
    uint8_t hash[32], sig[256];
    uint16_t wname[128];
    size_t i;
    for (i = 0; name[i] && i < 127; i++) wname[i] = (uint16_t)(unsigned char)name[i];
    wname[i] = 0;
    read_file("hash", hash, sizeof hash);
    NCRYPT_PROV_HANDLE hp = open_provider();
    NCRYPT_KEY_HANDLE hk = 0;
    check("OpenKey by PKCS#11 label", T->OpenKey(hp, &hk, wname, 0, 0), 0);
    truth("Algorithm Name of a PKCS#11 key", prop_is(hp, hk, W("Algorithm Name"), "ECDSA_P256"));
    DWORD n = 0;
    check("SignHash", T->SignHash(hp, hk, NULL, hash, 32, sig, sizeof sig, &n, 0), 0);
    char file[256];
    snprintf(file, sizeof file, "%s.sig", name);
    write_file(file, sig, n);
    check("FreeProvider", T->FreeProvider(hp), 0);
}

static void cmd_handles(void) {
    NCRYPT_PROV_HANDLE hp = open_provider();
    NCRYPT_KEY_HANDLE hk = 0, hk2 = 0;
    DWORD n = 0, v = 0;
    uint8_t buf[64];
    check("OpenKey", T->OpenKey(hp, &hk, W("ksp-p256"), 0, 0), 0);
    check("OpenKey again", T->OpenKey(hp, &hk2, W("ksp-p256"), 0, 0), 0);
    check("OpenKey missing", T->OpenKey(hp, &hk, W("no-such-key"), 0, 0), NTE_BAD_KEYSET);
    check("OpenKey NULL name", T->OpenKey(hp, &hk, NULL, 0, 0), NTE_INVALID_PARAMETER);
    check("OpenKey NULL out", T->OpenKey(hp, NULL, W("ksp-p256"), 0, 0), NTE_INVALID_PARAMETER);
    check("OpenKey bad flags", T->OpenKey(hp, &hk, W("ksp-p256"), 0, 0x1000), NTE_BAD_FLAGS);
    check("OpenProvider NULL out", T->OpenProvider(NULL, NULL, 0), NTE_INVALID_PARAMETER);

    /* Wrong kinds. */
    check("key handle as provider",
          T->GetProviderProperty(hk, W("Name"), buf, sizeof buf, &n, 0), NTE_INVALID_HANDLE);
    check("provider handle as key",
          T->GetKeyProperty(hp, hp, W("Name"), buf, sizeof buf, &n, 0), NTE_INVALID_HANDLE);
    check("FreeProvider of a key handle", T->FreeProvider(hk), NTE_INVALID_HANDLE);
    check("FreeKey of a provider handle", T->FreeKey(hp, hp), NTE_INVALID_HANDLE);

    /* NULL and garbage handles. */
    check("FreeProvider 0", T->FreeProvider(0), NTE_INVALID_HANDLE);
    check("GetKeyProperty key 0", T->GetKeyProperty(hp, 0, W("Name"), buf, sizeof buf, &n, 0),
          NTE_INVALID_HANDLE);
    check("SignHash key 0", T->SignHash(hp, 0, NULL, buf, 32, buf, sizeof buf, &n, 0),
          NTE_INVALID_HANDLE);
    check("SignHash garbage key", T->SignHash(hp, (NCRYPT_KEY_HANDLE)0xdeadbeef, NULL, buf, 32,
                                              buf, sizeof buf, &n, 0), NTE_INVALID_HANDLE);
    check("GetKeyProperty NULL pcbResult",
          T->GetKeyProperty(hp, hk, W("Length"), buf, sizeof buf, NULL, 0), NTE_INVALID_PARAMETER);
    check("GetKeyProperty unknown", T->GetKeyProperty(hp, hk, W("Nope"), buf, sizeof buf, &n, 0),
          NTE_NOT_SUPPORTED);
    check("GetKeyProperty short buffer",
          T->GetKeyProperty(hp, hk, W("Length"), buf, 2, &n, 0), NTE_BUFFER_TOO_SMALL);
    truth("GetKeyProperty short buffer size", n == 4);
    check("GetProviderProperty Name probe",
          T->GetProviderProperty(hp, W("Name"), NULL, 0, &n, 0), 0);
    truth("provider name size", n == 2 * (strlen("FerroHSM Key Storage Provider") + 1));
    check("GetProviderProperty Impl Type",
          T->GetProviderProperty(hp, W("Impl Type"), (uint8_t *)&v, 4, &n, 0), 0);
    check("SetKeyProperty flags", T->SetKeyProperty(hp, hk, W("Length"), buf, 4, 0x10), NTE_BAD_FLAGS);

    /* Stale: a freed key handle, and one freed twice; the other handle still works. */
    check("FreeKey", T->FreeKey(hp, hk), 0);
    check("stale key", T->GetKeyProperty(hp, hk, W("Length"), buf, sizeof buf, &n, 0),
          NTE_INVALID_HANDLE);
    check("FreeKey twice", T->FreeKey(hp, hk), NTE_INVALID_HANDLE);
    NCRYPT_KEY_HANDLE hk3 = 0;
    check("OpenKey after free", T->OpenKey(hp, &hk3, W("ksp-p256"), 0, 0), 0);
    truth("a new handle never aliases a freed one", hk3 != hk);
    check("other handle still works",
          T->GetKeyProperty(hp, hk2, W("Length"), (uint8_t *)&v, 4, &n, 0), 0);

    /* Buffers: ours once, nothing else. */
    DWORD count = 0;
    NCryptAlgorithmName *algs = NULL;
    check("EnumAlgorithms", T->EnumAlgorithms(hp, 0, &count, &algs, 0), 0);
    truth("seven algorithms", count == 7 && algs && algs[0].pszName && algs[0].pszName[0] == 'R');
    check("EnumAlgorithms signature", T->EnumAlgorithms(hp, NCRYPT_SIGNATURE_OPERATION, &count,
                                                        &algs, 0), 0);
    truth("four signature algorithms", count == 4);
    check("FreeBuffer", T->FreeBuffer(algs), 0);
    check("FreeBuffer twice", T->FreeBuffer(algs), NTE_INVALID_PARAMETER);
    check("FreeBuffer foreign", T->FreeBuffer(buf), NTE_INVALID_PARAMETER);
    check("FreeBuffer NULL", T->FreeBuffer(NULL), NTE_INVALID_PARAMETER);
    check("IsAlgSupported RSA", T->IsAlgSupported(hp, W("RSA"), 0), 0);
    check("IsAlgSupported ECDH_P521", T->IsAlgSupported(hp, W("ECDH_P521"), 0), 0);
    check("IsAlgSupported DSA", T->IsAlgSupported(hp, W("DSA"), 0), NTE_NOT_SUPPORTED);

    /* EnumKeys: one name per call, the cursor freed with FreeBuffer. */
    void *state = NULL;
    NCryptKeyName *kn = NULL;
    int found_rsa = 0, found_ec = 0, total = 0;
    SECURITY_STATUS s;
    while ((s = T->EnumKeys(hp, NULL, &kn, &state, 0)) == 0) {
        total++;
        if (kn->pszName[0] == 'k' && kn->pszName[4] == 'r') found_rsa = 1;
        if (kn->pszName[0] == 'k' && kn->pszName[4] == 'p') found_ec = 1;
        check("FreeBuffer key name", T->FreeBuffer(kn), 0);
        if (total > 100) break;
    }
    check("EnumKeys ends", s, NTE_NO_MORE_ITEMS);
    truth("EnumKeys lists both keys", found_rsa && found_ec);
    check("FreeBuffer enum state", T->FreeBuffer(state), 0);

    /* A name in use: FinalizeKey without NCRYPT_OVERWRITE_KEY_FLAG is NTE_EXISTS. */
    NCRYPT_KEY_HANDLE dup = 0;
    check("CreatePersistedKey existing name",
          T->CreatePersistedKey(hp, &dup, W("ECDSA_P256"), W("ksp-p256"), 0, 0), 0);
    truth("pending key Length", get_dword(hp, dup, W("Length")) == 256);
    check("SignHash with a pending key",
          T->SignHash(hp, dup, NULL, buf, 32, buf, sizeof buf, &n, 0), NTE_BAD_KEY_STATE);
    check("FinalizeKey existing name", T->FinalizeKey(hp, dup, 0), NTE_EXISTS);
    check("DeleteKey pending", T->DeleteKey(hp, dup, 0), 0);
    check("CreatePersistedKey unknown algorithm",
          T->CreatePersistedKey(hp, &dup, W("DSA"), W("x"), 0, 0), NTE_NOT_SUPPORTED);
    check("CreatePersistedKey bad flags",
          T->CreatePersistedKey(hp, &dup, W("RSA"), W("x"), 0, 0x1), NTE_BAD_FLAGS);

    check("PromptUser", T->PromptUser(hp, 0, W("x"), 0), NTE_NOT_SUPPORTED);
    check("NotifyChangeKey", T->NotifyChangeKey(hp, NULL, 0), NTE_NOT_SUPPORTED);
    check("KeyDerivation", T->KeyDerivation(hp, hk2, NULL, buf, 4, &n, 0), NTE_NOT_SUPPORTED);

    /* After FreeProvider the provider's handles are all dead. */
    check("FreeProvider", T->FreeProvider(hp), 0);
    check("FreeProvider twice", T->FreeProvider(hp), NTE_INVALID_HANDLE);
    check("key of a freed provider",
          T->GetKeyProperty(hp, hk2, W("Length"), buf, sizeof buf, &n, 0), NTE_INVALID_HANDLE);
    NCRYPT_PROV_HANDLE hp2 = open_provider();
    check("key handle under another provider",
          T->GetKeyProperty(hp2, hk3, W("Length"), buf, sizeof buf, &n, 0), NTE_INVALID_HANDLE);
    check("FreeProvider 2", T->FreeProvider(hp2), 0);
}

static void cmd_ecdh(void) {
    NCRYPT_PROV_HANDLE hp = open_provider();
    NCRYPT_KEY_HANDLE a = 0, b = 0, apub = 0, bpub = 0;
    NCRYPT_SECRET_HANDLE sa = 0, sb = 0;
    uint8_t blob[256], ka[64], kb[64];
    DWORD n = 0, na = 0, nb = 0;
    check("Create ECDH A", T->CreatePersistedKey(hp, &a, W("ECDH_P256"), NULL, 0, 0), 0);
    check("Finalize A", T->FinalizeKey(hp, a, 0), 0);
    check("Create ECDH B", T->CreatePersistedKey(hp, &b, W("ECDH_P256"), NULL, 0, 0), 0);
    check("Finalize B", T->FinalizeKey(hp, b, 0), 0);
    check("Export A", T->ExportKey(hp, a, 0, W("ECCPUBLICBLOB"), NULL, blob, sizeof blob, &n, 0), 0);
    truth("ECDH magic", memcmp(blob, "ECK1", 4) == 0);
    check("Import A public", T->ImportKey(hp, 0, W("ECCPUBLICBLOB"), NULL, &apub, blob, n, 0), 0);
    check("Export B", T->ExportKey(hp, b, 0, W("ECCPUBLICBLOB"), NULL, blob, sizeof blob, &n, 0), 0);
    check("Import B public", T->ImportKey(hp, 0, W("ECCPUBLICBLOB"), NULL, &bpub, blob, n, 0), 0);
    check("SecretAgreement A", T->SecretAgreement(hp, a, bpub, &sa, 0), 0);
    check("SecretAgreement B", T->SecretAgreement(hp, b, apub, &sb, 0), 0);
    check("secret handle as key", T->FreeKey(hp, sa), NTE_INVALID_HANDLE);

    NCryptBuffer hb = { sizeof(u"SHA256"), KDF_HASH_ALGORITHM, (void *)u"SHA256" };
    NCryptBufferDesc params = { NCRYPTBUFFER_VERSION, 1, &hb };
    check("DeriveKey HASH probe", T->DeriveKey(hp, sa, W("HASH"), &params, NULL, 0, &na, 0), 0);
    truth("HASH size", na == 32);
    check("DeriveKey HASH A", T->DeriveKey(hp, sa, W("HASH"), &params, ka, sizeof ka, &na, 0), 0);
    check("DeriveKey HASH B", T->DeriveKey(hp, sb, W("HASH"), &params, kb, sizeof kb, &nb, 0), 0);
    truth("HASH agrees", na == 32 && nb == 32 && memcmp(ka, kb, 32) == 0);
    check("DeriveKey HMAC A", T->DeriveKey(hp, sa, W("HMAC"), &params, ka, sizeof ka, &na,
                                           KDF_USE_SECRET_AS_HMAC_KEY_FLAG), 0);
    check("DeriveKey HMAC B", T->DeriveKey(hp, sb, W("HMAC"), &params, kb, sizeof kb, &nb,
                                           KDF_USE_SECRET_AS_HMAC_KEY_FLAG), 0);
    truth("HMAC agrees", na == 32 && memcmp(ka, kb, 32) == 0);
    check("DeriveKey TRUNCATE A", T->DeriveKey(hp, sa, W("TRUNCATE"), NULL, ka, sizeof ka, &na, 0), 0);
    check("DeriveKey TRUNCATE B", T->DeriveKey(hp, sb, W("TRUNCATE"), NULL, kb, sizeof kb, &nb, 0), 0);
    truth("raw secret agrees", na == 32 && memcmp(ka, kb, 32) == 0);
    write_file("z.le", ka, na);
    check("DeriveKey unknown KDF", T->DeriveKey(hp, sa, W("NOPE"), NULL, ka, sizeof ka, &na, 0),
          NTE_NOT_SUPPORTED);
    check("FreeSecret", T->FreeSecret(hp, sa), 0);
    check("FreeSecret twice", T->FreeSecret(hp, sa), NTE_INVALID_HANDLE);
    check("DeriveKey freed secret", T->DeriveKey(hp, sa, W("HASH"), NULL, ka, sizeof ka, &na, 0),
          NTE_INVALID_HANDLE);
    check("FreeSecret B", T->FreeSecret(hp, sb), 0);
    check("FreeProvider", T->FreeProvider(hp), 0);
}

static void cmd_pkcs8(void) {
    uint8_t p8[8192], hash[32], sig[512];
    DWORD len = read_file("import.p8", p8, sizeof p8), n = 0;
    read_file("hash", hash, sizeof hash);
    NCRYPT_PROV_HANDLE hp = open_provider();
    NCRYPT_KEY_HANDLE hk = 0;
    NCryptBuffer b = { sizeof(u"p8-rsa"), NCRYPTBUFFER_PKCS_KEY_NAME, (void *)u"p8-rsa" };
    NCryptBufferDesc params = { NCRYPTBUFFER_VERSION, 1, &b };
    check("ImportKey PKCS8 RSA", T->ImportKey(hp, 0, W("PKCS8_PRIVATEKEY"), &params, &hk, p8, len, 0), 0);
    truth("PKCS8 RSA Length", get_dword(hp, hk, W("Length")) == 2048);
    BCRYPT_PKCS1_PADDING_INFO pkcs1 = { W("SHA256") };
    check("SignHash PKCS8 RSA",
          T->SignHash(hp, hk, &pkcs1, hash, 32, sig, sizeof sig, &n, BCRYPT_PAD_PKCS1), 0);
    write_file("p8.sig", sig, n);
    p8[len / 2] ^= 0x55;
    NCRYPT_KEY_HANDLE bad = 0;
    truth("ImportKey of a corrupt PKCS8 fails",
          T->ImportKey(hp, 0, W("PKCS8_PRIVATEKEY"), NULL, &bad, p8, len, 0) != 0);
    check("FreeProvider", T->FreeProvider(hp), 0);
}

static void cmd_byok_kek(void) {
    NCRYPT_PROV_HANDLE hp = open_provider();
    NCRYPT_KEY_HANDLE kek = create(hp, W("RSA"), W("ksp-kek"), 3072, "KEK");
    export_public(hp, kek, W("RSAPUBLICBLOB"), "kek.blob");
    check("FreeProvider", T->FreeProvider(hp), 0);
}

static void cmd_byok_import(void) {
    uint8_t blob[4096], hash[32], sig[64];
    DWORD len = read_file("byok.blob", blob, sizeof blob), n = 0;
    read_file("hash", hash, sizeof hash);
    NCRYPT_PROV_HANDLE hp = open_provider();
    NCRYPT_KEY_HANDLE kek = 0, hk = 0, bad = 0;
    check("OpenKey KEK", T->OpenKey(hp, &kek, W("ksp-kek"), 0, 0), 0);
    NCryptBuffer b[2] = {
        { sizeof(u"byok-ec"), NCRYPTBUFFER_PKCS_KEY_NAME, (void *)u"byok-ec" },
        { sizeof(u"ECDSA_P256"), NCRYPTBUFFER_PKCS_ALG_ID, (void *)u"ECDSA_P256" },
    };
    NCryptBufferDesc params = { NCRYPTBUFFER_VERSION, 2, b };
    check("ImportKey without the KEK",
          T->ImportKey(hp, 0, W("PKCS11RsaAesWrapBlob"), &params, &hk, blob, len, 0),
          NTE_INVALID_PARAMETER);
    blob[len - 40] ^= 1;
    SECURITY_STATUS s = T->ImportKey(hp, kek, W("PKCS11RsaAesWrapBlob"), &params, &bad, blob, len, 0);
    truth("ImportKey of a tampered blob fails", s != 0);
    blob[len - 40] ^= 1;
    check("ImportKey PKCS11RsaAesWrapBlob",
          T->ImportKey(hp, kek, W("PKCS11RsaAesWrapBlob"), &params, &hk, blob, len, 0), 0);
    truth("imported Name", prop_is(hp, hk, W("Name"), "byok-ec"));
    truth("imported Algorithm Name", prop_is(hp, hk, W("Algorithm Name"), "ECDSA_P256"));
    truth("imported Export Policy", get_dword(hp, hk, W("Export Policy")) == 0);
    check("SignHash imported", T->SignHash(hp, hk, NULL, hash, 32, sig, sizeof sig, &n, 0), 0);
    write_file("byok.sig", sig, n);
    check("VerifySignature imported", T->VerifySignature(hp, hk, NULL, hash, 32, sig, n, 0), 0);
    check("ExportKey ECCPRIVATEBLOB of the imported key",
          T->ExportKey(hp, hk, 0, W("ECCPRIVATEBLOB"), NULL, blob, sizeof blob, &n, 0),
          NTE_NOT_SUPPORTED);
    check("ImportKey again without overwrite",
          T->ImportKey(hp, kek, W("PKCS11RsaAesWrapBlob"), &params, &bad, blob, len, 0),
          NTE_EXISTS);
    check("FreeProvider", T->FreeProvider(hp), 0);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s LIB COMMAND DIR [ARG]\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 2; }
    NTSTATUS (*get)(LPCWSTR, NCRYPT_KEY_STORAGE_FUNCTION_TABLE **, DWORD);
    *(void **)&get = dlsym(lib, "GetKeyStorageInterface");
    if (!get) { fprintf(stderr, "no GetKeyStorageInterface\n"); return 2; }
    check("GetKeyStorageInterface NULL", get(W("FerroHSM Key Storage Provider"), NULL, 0),
          (NTSTATUS)0xC000000D);
    check("GetKeyStorageInterface", get(W("FerroHSM Key Storage Provider"), &T, 0), 0);
    truth("interface version 3.0", T && T->Version.MajorVersion == 3 && T->Version.MinorVersion == 0);
    dir = argv[3];
    const char *cmd = argv[2];
    if (!strcmp(cmd, "create")) cmd_create();
    else if (!strcmp(cmd, "decrypt")) cmd_decrypt();
    else if (!strcmp(cmd, "sign") && argc > 4) cmd_sign(argv[4]);
    else if (!strcmp(cmd, "handles")) cmd_handles();
    else if (!strcmp(cmd, "ecdh")) cmd_ecdh();
    else if (!strcmp(cmd, "pkcs8")) cmd_pkcs8();
    else if (!strcmp(cmd, "byok-kek")) cmd_byok_kek();
    else if (!strcmp(cmd, "byok-import")) cmd_byok_import();
    else { fprintf(stderr, "unknown command %s\n", cmd); return 2; }
    printf("%d failures\n", failures);
    dlclose(lib);
    return failures ? 1 : 0;
}
