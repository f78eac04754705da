/* Hostile calls through the C ABI: NULL pointers, wrong and absurd lengths, bad handles,
 * calls in the wrong state, several threads on one session. Each check compares the exact
 * return code; the run fails on the first crash (the process dies) and reports every
 * mismatch. Usage: hostile MODULE USER_PIN  (FERROHSM_HOME names a home with token 0). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pkcs11.h"

static CK_FUNCTION_LIST_PTR f;
static int checks, failures;

static const char *name(CK_RV rv) {
    switch (rv) {
#define N(x) case x: return #x;
        N(CKR_OK) N(CKR_ARGUMENTS_BAD) N(CKR_CRYPTOKI_NOT_INITIALIZED)
        N(CKR_CRYPTOKI_ALREADY_INITIALIZED) N(CKR_SLOT_ID_INVALID) N(CKR_BUFFER_TOO_SMALL)
        N(CKR_MECHANISM_INVALID) N(CKR_MECHANISM_PARAM_INVALID) N(CKR_SESSION_HANDLE_INVALID)
        N(CKR_SESSION_PARALLEL_NOT_SUPPORTED) N(CKR_USER_TYPE_INVALID) N(CKR_PIN_INCORRECT)
        N(CKR_PIN_LEN_RANGE) N(CKR_USER_ALREADY_LOGGED_IN) N(CKR_OBJECT_HANDLE_INVALID)
        N(CKR_OPERATION_NOT_INITIALIZED) N(CKR_OPERATION_ACTIVE) N(CKR_KEY_HANDLE_INVALID)
        N(CKR_KEY_TYPE_INCONSISTENT) N(CKR_ATTRIBUTE_VALUE_INVALID) N(CKR_ATTRIBUTE_TYPE_INVALID)
        N(CKR_TEMPLATE_INCOMPLETE) N(CKR_DATA_LEN_RANGE) N(CKR_GENERAL_ERROR)
        N(CKR_FUNCTION_NOT_SUPPORTED) N(CKR_USER_NOT_LOGGED_IN) N(CKR_KEY_FUNCTION_NOT_PERMITTED)
        N(CKR_HOST_MEMORY) N(CKR_ENCRYPTED_DATA_LEN_RANGE) N(CKR_SIGNATURE_INVALID)
        N(CKR_TEMPLATE_INCONSISTENT) N(CKR_KEY_SIZE_RANGE) N(CKR_SESSION_READ_ONLY)
#undef N
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "0x%lx", rv);
        return buf;
    }
    }
}

/* One check: the code must be one of the expected ones (0-terminated list after `a`). */
static void expect(const char *what, CK_RV got, CK_RV a, CK_RV b) {
    checks++;
    if (got == a || (b != (CK_RV)-1 && got == b)) {
        return;
    }
    failures++;
    printf("MISMATCH %s: got %s, expected %s", what, name(got), name(a));
    if (b != (CK_RV)-1) printf(" or %s", name(b));
    printf("\n");
}
#define EXPECT(what, call, code) expect(what, (call), (code), (CK_RV)-1)
#define EXPECT2(what, call, c1, c2) expect(what, (call), (c1), (c2))

static const CK_ULONG HUGE_LEN = (CK_ULONG)1 << 40;

static CK_SESSION_HANDLE shared_session;
static volatile int finalized;
static void *random_thread(void *arg) {
    (void)arg;
    CK_BYTE buf[32];
    for (int i = 0; i < 100000; i++) {
        CK_RV rv = f->C_GenerateRandom(shared_session, buf, sizeof buf);
        if (rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_SESSION_HANDLE_INVALID) return NULL;
        if (rv != CKR_OK) return (void *)1;
        if (finalized && i > 100000) break;
    }
    return NULL;
}
static void *digest_thread(void *arg) {
    (void)arg;
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    CK_BYTE data[64] = {1}, out[32];
    for (int i = 0; i < 500; i++) {
        CK_ULONG len = sizeof out;
        CK_RV rv = f->C_DigestInit(shared_session, &sha);
        if (rv != CKR_OK && rv != CKR_OPERATION_ACTIVE) return (void *)1;
        rv = f->C_Digest(shared_session, data, sizeof data, out, &len);
        if (rv != CKR_OK && rv != CKR_OPERATION_NOT_INITIALIZED && rv != CKR_OPERATION_ACTIVE)
            return (void *)2;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODULE USER_PIN\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    CK_UTF8CHAR_PTR pin = (CK_UTF8CHAR_PTR)argv[2];
    CK_ULONG pin_len = strlen(argv[2]);

    /* ---- lifecycle */
    EXPECT("C_GetFunctionList(NULL)", gfl(NULL), CKR_ARGUMENTS_BAD);
    if (gfl(&f) != CKR_OK) return 2;
    CK_INFO info;
    EXPECT("C_GetInfo before C_Initialize", f->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    CK_C_INITIALIZE_ARGS bad = {0};
    bad.pReserved = &bad;
    EXPECT("C_Initialize pReserved != NULL", f->C_Initialize(&bad), CKR_ARGUMENTS_BAD);
    CK_C_INITIALIZE_ARGS partial = {0};
    partial.CreateMutex = (CK_CREATEMUTEX)1;
    EXPECT("C_Initialize with only CreateMutex", f->C_Initialize(&partial), CKR_ARGUMENTS_BAD);
    EXPECT("C_Initialize(NULL)", f->C_Initialize(NULL), CKR_OK);
    EXPECT("C_Initialize again", f->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    EXPECT("C_GetInfo(NULL)", f->C_GetInfo(NULL), CKR_ARGUMENTS_BAD);

    /* ---- slots and tokens */
    CK_ULONG count = 0;
    EXPECT("C_GetSlotList(NULL, NULL)", f->C_GetSlotList(CK_TRUE, NULL, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_GetSlotList count", f->C_GetSlotList(CK_TRUE, NULL, &count), CKR_OK);
    CK_SLOT_ID slots[1];
    CK_ULONG zero = 0;
    if (count > 0)
        EXPECT("C_GetSlotList into 0 entries", f->C_GetSlotList(CK_TRUE, slots, &zero), CKR_BUFFER_TOO_SMALL);
    CK_SLOT_INFO sinfo;
    EXPECT("C_GetSlotInfo(bad slot)", f->C_GetSlotInfo(999999, &sinfo), CKR_SLOT_ID_INVALID);
    EXPECT("C_GetTokenInfo(NULL)", f->C_GetTokenInfo(0, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_GetMechanismList(NULL, NULL)", f->C_GetMechanismList(0, NULL, NULL), CKR_ARGUMENTS_BAD);
    CK_MECHANISM_INFO minfo;
    EXPECT("C_GetMechanismInfo(unknown)", f->C_GetMechanismInfo(0, 0x0FFFFFFF, &minfo), CKR_MECHANISM_INVALID);

    /* ---- sessions and login */
    CK_SESSION_HANDLE s;
    EXPECT("C_OpenSession without CKF_SERIAL_SESSION", f->C_OpenSession(0, 0, NULL, NULL, &s), CKR_SESSION_PARALLEL_NOT_SUPPORTED);
    EXPECT("C_OpenSession(NULL handle)", f->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_OpenSession", f->C_OpenSession(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    EXPECT("C_CloseSession(bad handle)", f->C_CloseSession(0xdeadbeef), CKR_SESSION_HANDLE_INVALID);
    EXPECT("C_Login(NULL PIN, len 6)", f->C_Login(s, CKU_USER, NULL, 6), CKR_ARGUMENTS_BAD);
    EXPECT("C_Login(bad user type)", f->C_Login(s, 77, pin, pin_len), CKR_USER_TYPE_INVALID);
    EXPECT("C_Login(wrong PIN)", f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)"999999", 6), CKR_PIN_INCORRECT);
    EXPECT2("C_Login(absurd PIN length)", f->C_Login(s, CKU_USER, pin, HUGE_LEN), CKR_PIN_LEN_RANGE, CKR_ARGUMENTS_BAD);
    EXPECT("C_Login", f->C_Login(s, CKU_USER, pin, pin_len), CKR_OK);
    EXPECT("C_Login again", f->C_Login(s, CKU_USER, pin, pin_len), CKR_USER_ALREADY_LOGGED_IN);

    /* ---- objects and templates */
    CK_OBJECT_CLASS data_class = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    CK_BYTE value[8] = "payload";
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &data_class, sizeof data_class},
        {CKA_TOKEN, &yes, sizeof yes},
        {CKA_VALUE, value, sizeof value},
    };
    CK_OBJECT_HANDLE h;
    EXPECT("C_CreateObject(NULL template, count 3)", f->C_CreateObject(s, NULL, 3, &h), CKR_ARGUMENTS_BAD);
    EXPECT("C_CreateObject(NULL handle out)", f->C_CreateObject(s, tmpl, 3, NULL), CKR_ARGUMENTS_BAD);
    CK_ATTRIBUTE null_value[] = {{CKA_CLASS, &data_class, sizeof data_class}, {CKA_VALUE, NULL, 4}};
    EXPECT2("C_CreateObject(pValue NULL, length 4)", f->C_CreateObject(s, null_value, 2, &h), CKR_ARGUMENTS_BAD, CKR_ATTRIBUTE_VALUE_INVALID);
    CK_ATTRIBUTE huge_value[] = {{CKA_CLASS, &data_class, sizeof data_class}, {CKA_VALUE, value, HUGE_LEN}};
    EXPECT2("C_CreateObject(absurd value length)", f->C_CreateObject(s, huge_value, 2, &h), CKR_ATTRIBUTE_VALUE_INVALID, CKR_ARGUMENTS_BAD);
    EXPECT2("C_CreateObject(absurd attribute count)", f->C_CreateObject(s, tmpl, HUGE_LEN, &h), CKR_ARGUMENTS_BAD, CKR_TEMPLATE_INCONSISTENT);
    CK_ULONG short_class = 0;
    CK_ATTRIBUTE short_ulong[] = {{CKA_CLASS, &short_class, 3}};
    EXPECT("C_CreateObject(CKA_CLASS of 3 bytes)", f->C_CreateObject(s, short_ulong, 1, &h), CKR_ATTRIBUTE_VALUE_INVALID);
    EXPECT("C_CreateObject", f->C_CreateObject(s, tmpl, 3, &h), CKR_OK);
    CK_ATTRIBUTE get = {CKA_VALUE, NULL, 0};
    EXPECT("C_GetAttributeValue(bad object)", f->C_GetAttributeValue(s, 0xdead, &get, 1), CKR_OBJECT_HANDLE_INVALID);
    EXPECT("C_GetAttributeValue(NULL template)", f->C_GetAttributeValue(s, h, NULL, 1), CKR_ARGUMENTS_BAD);
    CK_BYTE small[2];
    CK_ATTRIBUTE get_small = {CKA_VALUE, small, sizeof small};
    EXPECT("C_GetAttributeValue(short buffer)", f->C_GetAttributeValue(s, h, &get_small, 1), CKR_BUFFER_TOO_SMALL);
    EXPECT("C_DestroyObject(bad object)", f->C_DestroyObject(s, 0xdead), CKR_OBJECT_HANDLE_INVALID);
    CK_OBJECT_HANDLE found[4];
    CK_ULONG nfound;
    EXPECT("C_FindObjects before init", f->C_FindObjects(s, found, 4, &nfound), CKR_OPERATION_NOT_INITIALIZED);
    EXPECT("C_FindObjectsInit", f->C_FindObjectsInit(s, tmpl, 1), CKR_OK);
    EXPECT("C_FindObjectsInit twice", f->C_FindObjectsInit(s, tmpl, 1), CKR_OPERATION_ACTIVE);
    EXPECT("C_FindObjects(NULL count)", f->C_FindObjects(s, found, 4, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_FindObjectsFinal", f->C_FindObjectsFinal(s), CKR_OK);

    /* ---- an AES key to misuse */
    CK_MECHANISM keygen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_ULONG key_len = 16;
    CK_ATTRIBUTE key_tmpl[] = {{CKA_VALUE_LEN, &key_len, sizeof key_len}, {CKA_ENCRYPT, &yes, sizeof yes}};
    CK_OBJECT_HANDLE aes;
    EXPECT("C_GenerateKey(AES)", f->C_GenerateKey(s, &keygen, key_tmpl, 2, &aes), CKR_OK);
    EXPECT("C_GenerateKey(NULL mechanism)", f->C_GenerateKey(s, NULL, key_tmpl, 2, &aes), CKR_ARGUMENTS_BAD);
    /* 3.0: a NULL mechanism cancels an active operation (none is active: nothing to do). */
    EXPECT("C_EncryptInit(NULL mechanism)", f->C_EncryptInit(s, NULL, aes), CKR_OK);
    CK_GCM_PARAMS gcm = {0};
    gcm.pIv = NULL;
    gcm.ulIvLen = 12;
    gcm.ulIvBits = 96;
    gcm.ulTagBits = 128;
    CK_MECHANISM gcm_mech = {CKM_AES_GCM, &gcm, sizeof gcm};
    EXPECT("GCM: pIv NULL, ulIvLen 12 (crashes SoftHSM)", f->C_EncryptInit(s, &gcm_mech, aes), CKR_MECHANISM_PARAM_INVALID);
    CK_BYTE iv[12] = {0};
    gcm.pIv = iv;
    gcm.pAAD = NULL;
    gcm.ulAADLen = 1000;
    EXPECT("GCM: pAAD NULL, ulAADLen 1000", f->C_EncryptInit(s, &gcm_mech, aes), CKR_MECHANISM_PARAM_INVALID);
    gcm.ulAADLen = 0;
    CK_MECHANISM gcm_short = {CKM_AES_GCM, &gcm, sizeof gcm - 1};
    EXPECT("GCM: ulParameterLen one short", f->C_EncryptInit(s, &gcm_short, aes), CKR_MECHANISM_PARAM_INVALID);
    CK_MECHANISM gcm_null = {CKM_AES_GCM, NULL, sizeof gcm};
    EXPECT("GCM: pParameter NULL", f->C_EncryptInit(s, &gcm_null, aes), CKR_MECHANISM_PARAM_INVALID);
    gcm.ulTagBits = 129;
    EXPECT("GCM: tag of 129 bits", f->C_EncryptInit(s, &gcm_mech, aes), CKR_MECHANISM_PARAM_INVALID);
    CK_BYTE iv15[15] = {0};
    CK_MECHANISM cbc15 = {CKM_AES_CBC, iv15, sizeof iv15};
    EXPECT("CBC: 15-byte IV", f->C_EncryptInit(s, &cbc15, aes), CKR_MECHANISM_PARAM_INVALID);
    CK_BYTE block[16] = {0}, out[64];
    CK_ULONG out_len = sizeof out;
    EXPECT("C_Encrypt before init", f->C_Encrypt(s, block, 16, out, &out_len), CKR_OPERATION_NOT_INITIALIZED);
    CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0};
    EXPECT("C_EncryptInit(ECB)", f->C_EncryptInit(s, &ecb, aes), CKR_OK);
    EXPECT("C_EncryptInit twice", f->C_EncryptInit(s, &ecb, aes), CKR_OPERATION_ACTIVE);
    EXPECT("C_Encrypt(NULL length out)", f->C_Encrypt(s, block, 16, out, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_Encrypt(NULL data, length 16)", f->C_Encrypt(s, NULL, 16, out, &out_len), CKR_ARGUMENTS_BAD);
    EXPECT("C_EncryptInit(ECB) again", f->C_EncryptInit(s, &ecb, aes), CKR_OK);
    out_len = sizeof out;
    EXPECT2("C_Encrypt(absurd data length)", f->C_Encrypt(s, block, HUGE_LEN, out, &out_len), CKR_DATA_LEN_RANGE, CKR_ARGUMENTS_BAD);
    EXPECT("C_EncryptInit(ECB) once more", f->C_EncryptInit(s, &ecb, aes), CKR_OK);
    out_len = 4;
    EXPECT("C_Encrypt into 4 bytes", f->C_Encrypt(s, block, 16, out, &out_len), CKR_BUFFER_TOO_SMALL);
    EXPECT("C_Encrypt (length reported)", out_len == 16 ? CKR_OK : CKR_GENERAL_ERROR, CKR_OK);
    EXPECT("C_Encrypt after BUFFER_TOO_SMALL", f->C_Encrypt(s, block, 16, out, &out_len), CKR_OK);
    EXPECT("C_Encrypt(15 bytes, ECB)", (f->C_EncryptInit(s, &ecb, aes), f->C_Encrypt(s, block, 15, out, &out_len)), CKR_DATA_LEN_RANGE);
    CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
    EXPECT("C_SignInit(ECDSA with an AES key)", f->C_SignInit(s, &ecdsa, aes), CKR_KEY_TYPE_INCONSISTENT);
    EXPECT("C_SignInit(bad key handle)", f->C_SignInit(s, &ecdsa, 0xdead), CKR_KEY_HANDLE_INVALID);
    CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
    EXPECT("C_DigestInit", f->C_DigestInit(s, &sha), CKR_OK);
    out_len = sizeof out;
    EXPECT("C_Digest(NULL data, length 5)", f->C_Digest(s, NULL, 5, out, &out_len), CKR_ARGUMENTS_BAD);
    EXPECT("C_GenerateRandom(NULL, 16)", f->C_GenerateRandom(s, NULL, 16), CKR_ARGUMENTS_BAD);
    EXPECT("C_GenerateRandom(buf, 0)", f->C_GenerateRandom(s, out, 0), CKR_OK);
    CK_MECHANISM kw = {CKM_AES_KEY_WRAP, NULL, 0};
    EXPECT("C_WrapKey(NULL length out)", f->C_WrapKey(s, &kw, aes, aes, out, NULL), CKR_ARGUMENTS_BAD);
    EXPECT("C_SessionCancel(bad session)", f->C_CloseSession(0), CKR_SESSION_HANDLE_INVALID);

    /* ---- eight threads racing on one session: no crash, only the codes a race allows */
    shared_session = s;
    pthread_t t[8];
    for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, digest_thread, NULL);
    int bad_codes = 0;
    for (int i = 0; i < 8; i++) {
        void *r;
        pthread_join(t[i], &r);
        if (r) bad_codes++;
    }
    EXPECT("8 threads x 500 digests on one session", bad_codes == 0 ? CKR_OK : CKR_GENERAL_ERROR, CKR_OK);

    /* ---- finalize while four threads are inside calls: theirs end with CKR_OK, or with
       CKR_CRYPTOKI_NOT_INITIALIZED / CKR_SESSION_HANDLE_INVALID once it is done; no crash */
    EXPECT("C_Finalize(non-NULL reserved)", f->C_Finalize(&bad), CKR_ARGUMENTS_BAD);
    pthread_t r[4];
    for (int i = 0; i < 4; i++) pthread_create(&r[i], NULL, random_thread, NULL);
    struct timespec pause = {0, 50 * 1000 * 1000};
    nanosleep(&pause, NULL);
    EXPECT("C_Finalize with threads inside calls", f->C_Finalize(NULL), CKR_OK);
    finalized = 1;
    int bad_threads = 0;
    for (int i = 0; i < 4; i++) {
        void *rr;
        pthread_join(r[i], &rr);
        if (rr) bad_threads++;
    }
    EXPECT("threads racing C_Finalize saw only the allowed codes", bad_threads == 0 ? CKR_OK : CKR_GENERAL_ERROR, CKR_OK);
    EXPECT("C_GetInfo after C_Finalize", f->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
    EXPECT("C_OpenSession after C_Finalize", f->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_CRYPTOKI_NOT_INITIALIZED);

    printf("%d checks, %d mismatches\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
