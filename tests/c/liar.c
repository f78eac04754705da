/* A lying PKCS#11 source module, for `ferrohsm migrate` tests (tests/tests/migrate_protection.rs).
 *
 * It forwards every call to a real module ($LIAR_REAL_MODULE, default SoftHSMv2), so keys,
 * sessions and wrapping are real, and lies in C_GetAttributeValue and C_WrapKey about the
 * objects whose CKA_LABEL is named in LIES below: it stays silent about attributes
 * (CK_UNAVAILABLE_INFORMATION with CKR_ATTRIBUTE_TYPE_INVALID or CKR_ATTRIBUTE_SENSITIVE),
 * claims odd values (a CK_BBOOL of 2, four bytes for a flag, an empty flag, a date that is no
 * date, a mechanism list of three bytes, another class, a flag its provenance contradicts), writes a length beyond the buffer it
 * was given, announces huge lengths on the size query, fails whole calls, and hands out
 * malformed wrapped keys (garbage, truncated, a huge announced length, a length beyond the
 * buffer). It never writes beyond a buffer: the lies are in the lengths and codes. */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "pkcs11.h"

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST liar;

/* How one attribute (or the wrapped key) of a labelled object is lied about. */
enum how {
    SILENT,           /* CK_UNAVAILABLE_INFORMATION, CKR_ATTRIBUTE_TYPE_INVALID */
    SILENT_SENSITIVE, /* CK_UNAVAILABLE_INFORMATION, CKR_ATTRIBUTE_SENSITIVE */
    VALUE,            /* this value instead of the real one */
    OVERSIZE,         /* the real value, with a length 4096 bytes beyond the buffer */
    HUGE,             /* a huge length on the size query */
    FAIL,             /* the whole call fails with CKR_DEVICE_ERROR */
    GARBAGE,          /* (wrap) 40 bytes of 0xA5 */
    TRUNCATED,        /* (wrap) the first half of the real wrapped key */
};

/* Stands for the wrapped key in LIES (not an attribute). */
#define WRAPPED ((CK_ATTRIBUTE_TYPE)-1)

struct lie {
    const char *label;
    CK_ATTRIBUTE_TYPE type;
    enum how how;
    const void *value;
    CK_ULONG len;
};

static const CK_BYTE BOOL_FALSE = 0;
static const CK_BYTE BOOL_TRUE = 1;
static const CK_BYTE BOOL_TWO = 2;
static const CK_BYTE FOUR_BYTES[4] = {1, 0, 0, 0};
static const CK_BYTE THREE_BYTES[3] = {0x40, 0x10, 0};
static const CK_OBJECT_CLASS DATA_CLASS = CKO_DATA;

static const struct lie LIES[] = {
    {"silent-sensitive", CKA_SENSITIVE, SILENT, NULL, 0},
    {"silent-sensitive", CKA_PRIVATE, SILENT, NULL, 0},
    {"silent-auth", CKA_ALWAYS_AUTHENTICATE, SILENT, NULL, 0},
    {"silent-auth", CKA_PRIVATE, SILENT_SENSITIVE, NULL, 0},
    {"silent-auth", CKA_SENSITIVE, SILENT, NULL, 0},
    {"silent-mechs", CKA_ALLOWED_MECHANISMS, SILENT, NULL, 0},
    {"silent-all", CKA_SENSITIVE, SILENT, NULL, 0},
    {"silent-all", CKA_EXTRACTABLE, SILENT, NULL, 0},
    {"silent-all", CKA_PRIVATE, SILENT, NULL, 0},
    {"silent-all", CKA_MODIFIABLE, SILENT, NULL, 0},
    {"silent-all", CKA_COPYABLE, SILENT, NULL, 0},
    {"silent-all", CKA_DESTROYABLE, SILENT, NULL, 0},
    {"silent-all", CKA_WRAP_WITH_TRUSTED, SILENT, NULL, 0},
    {"silent-all", CKA_ENCRYPT, SILENT, NULL, 0},
    {"silent-all", CKA_DECRYPT, SILENT, NULL, 0},
    {"silent-all", CKA_SIGN, SILENT, NULL, 0},
    {"silent-all", CKA_VERIFY, SILENT, NULL, 0},
    {"silent-all", CKA_WRAP, SILENT, NULL, 0},
    {"silent-all", CKA_UNWRAP, SILENT, NULL, 0},
    {"silent-all", CKA_DERIVE, SILENT, NULL, 0},
    {"silent-all", CKA_ALLOWED_MECHANISMS, SILENT, NULL, 0},
    {"odd", CKA_SENSITIVE, VALUE, &BOOL_TWO, 1},
    {"odd", CKA_PRIVATE, VALUE, FOUR_BYTES, sizeof FOUR_BYTES},
    {"odd", CKA_DESTROYABLE, VALUE, "", 0},
    {"odd", CKA_START_DATE, VALUE, "2024-1-1", 8},
    {"odd-mechs", CKA_ALLOWED_MECHANISMS, VALUE, THREE_BYTES, sizeof THREE_BYTES},
    /* A restriction the standard defines for private keys only, on a secret key. */
    {"secret-auth", CKA_ALWAYS_AUTHENTICATE, VALUE, &BOOL_TRUE, 1},
    /* Plausible values that contradict the key's own provenance flags. */
    {"contradiction", CKA_SENSITIVE, VALUE, &BOOL_FALSE, 1},
    {"contradiction", CKA_NEVER_EXTRACTABLE, VALUE, &BOOL_TRUE, 1},
    {"oversize", CKA_SENSITIVE, OVERSIZE, NULL, 0},
    {"oversize", CKA_PRIVATE, OVERSIZE, NULL, 0},
    {"huge", CKA_LABEL, HUGE, NULL, 0},
    {"huge", CKA_PRIVATE, HUGE, NULL, 0},
    {"huge", CKA_WRAP_TEMPLATE, HUGE, NULL, 0},
    {"failing", CKA_SENSITIVE, FAIL, NULL, 0},
    {"class-lie", CKA_CLASS, VALUE, &DATA_CLASS, sizeof DATA_CLASS},
    {"garbage-blob", WRAPPED, GARBAGE, NULL, 0},
    {"truncated-blob", WRAPPED, TRUNCATED, NULL, 0},
    {"huge-blob", WRAPPED, HUGE, NULL, 0},
    {"oversize-blob", WRAPPED, OVERSIZE, NULL, 0},
};

/* The real CKA_LABEL of an object, NUL-terminated; 0 if there is none that fits. */
static int label_of(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, char *out, CK_ULONG size) {
    CK_ATTRIBUTE a = {CKA_LABEL, NULL, 0};
    if (real->C_GetAttributeValue(s, o, &a, 1) != CKR_OK || a.ulValueLen >= size) {
        return 0;
    }
    a.pValue = out;
    if (real->C_GetAttributeValue(s, o, &a, 1) != CKR_OK || a.ulValueLen >= size) {
        return 0;
    }
    out[a.ulValueLen] = 0;
    return 1;
}

static const struct lie *lie_for(const char *label, CK_ATTRIBUTE_TYPE type) {
    for (size_t i = 0; i < sizeof LIES / sizeof LIES[0]; i++) {
        if (LIES[i].type == type && strcmp(LIES[i].label, label) == 0) {
            return &LIES[i];
        }
    }
    return NULL;
}

/* The worse of two C_GetAttributeValue codes (errors beat the per-entry codes). */
static CK_RV worse(CK_RV a, CK_RV b) {
    if (a == CKR_OK) return b;
    if (b == CKR_OK) return a;
    if (a == CKR_ATTRIBUTE_SENSITIVE || a == CKR_ATTRIBUTE_TYPE_INVALID ||
        a == CKR_BUFFER_TOO_SMALL) {
        return b;
    }
    return a;
}

static CK_RV liar_GetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                                    CK_ATTRIBUTE_PTR t, CK_ULONG n) {
    char label[64];
    if (t == NULL || n == 0 || !label_of(s, o, label, sizeof label)) {
        return real->C_GetAttributeValue(s, o, t, n);
    }
    /* The entries told the truth about go to the real module; the others are made up. */
    CK_ATTRIBUTE *honest = calloc(n, sizeof *honest);
    CK_ULONG *where = calloc(n, sizeof *where);
    if (honest == NULL || where == NULL) {
        free(honest);
        free(where);
        return CKR_HOST_MEMORY;
    }
    CK_ULONG m = 0;
    for (CK_ULONG i = 0; i < n; i++) {
        const struct lie *l = lie_for(label, t[i].type);
        if (l == NULL || l->how == OVERSIZE) {
            honest[m] = t[i];
            where[m++] = i;
        } else if (l->how == FAIL) {
            free(honest);
            free(where);
            return CKR_DEVICE_ERROR;
        }
    }
    CK_RV rv = CKR_OK;
    if (m > 0) {
        rv = real->C_GetAttributeValue(s, o, honest, m);
        for (CK_ULONG j = 0; j < m; j++) {
            t[where[j]].ulValueLen = honest[j].ulValueLen;
        }
    }
    free(honest);
    free(where);
    for (CK_ULONG i = 0; i < n; i++) {
        const struct lie *l = lie_for(label, t[i].type);
        if (l == NULL) continue;
        switch (l->how) {
        case SILENT:
            t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            rv = worse(rv, CKR_ATTRIBUTE_TYPE_INVALID);
            break;
        case SILENT_SENSITIVE:
            t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            rv = worse(rv, CKR_ATTRIBUTE_SENSITIVE);
            break;
        case VALUE:
            if (t[i].pValue == NULL) {
                t[i].ulValueLen = l->len;
            } else if (t[i].ulValueLen < l->len) {
                t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
                rv = worse(rv, CKR_BUFFER_TOO_SMALL);
            } else {
                memcpy(t[i].pValue, l->value, l->len);
                t[i].ulValueLen = l->len;
            }
            break;
        case OVERSIZE:
            if (t[i].pValue != NULL && t[i].ulValueLen != CK_UNAVAILABLE_INFORMATION) {
                t[i].ulValueLen += 4096;
            }
            break;
        case HUGE:
            /* For an attribute array, a whole number of CK_ATTRIBUTEs. */
            t[i].ulValueLen = (CK_ULONG)sizeof(CK_ATTRIBUTE) << 55;
            break;
        default:
            break;
        }
    }
    return rv;
}

static CK_RV liar_WrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE wrapping,
                          CK_OBJECT_HANDLE key, CK_BYTE_PTR out, CK_ULONG_PTR out_len) {
    char label[64];
    const struct lie *l = NULL;
    if (out_len != NULL && label_of(s, key, label, sizeof label)) {
        l = lie_for(label, WRAPPED);
    }
    if (l == NULL) {
        return real->C_WrapKey(s, mech, wrapping, key, out, out_len);
    }
    switch (l->how) {
    case GARBAGE:
        if (out != NULL && *out_len < 40) {
            *out_len = 40;
            return CKR_BUFFER_TOO_SMALL;
        }
        if (out != NULL) memset(out, 0xA5, 40);
        *out_len = 40;
        return CKR_OK;
    case HUGE:
        if (out == NULL) {
            *out_len = (CK_ULONG)1 << 40;
            return CKR_OK;
        }
        return real->C_WrapKey(s, mech, wrapping, key, out, out_len);
    case TRUNCATED: {
        CK_RV rv = real->C_WrapKey(s, mech, wrapping, key, out, out_len);
        if (rv == CKR_OK && out != NULL) *out_len /= 2;
        return rv;
    }
    case OVERSIZE: {
        CK_RV rv = real->C_WrapKey(s, mech, wrapping, key, out, out_len);
        if (rv == CKR_OK && out != NULL) *out_len += 1000;
        return rv;
    }
    default:
        return real->C_WrapKey(s, mech, wrapping, key, out, out_len);
    }
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
    if (list == NULL) return CKR_ARGUMENTS_BAD;
    if (real == NULL) {
        const char *path = getenv("LIAR_REAL_MODULE");
        void *lib = dlopen(path != NULL ? path : "/usr/lib/softhsm/libsofthsm2.so",
                           RTLD_NOW | RTLD_LOCAL);
        if (lib == NULL) return CKR_GENERAL_ERROR;
        CK_C_GetFunctionList get;
        void *sym = dlsym(lib, "C_GetFunctionList");
        if (sym == NULL) return CKR_GENERAL_ERROR;
        memcpy(&get, &sym, sizeof get);
        if (get(&real) != CKR_OK || real == NULL) return CKR_GENERAL_ERROR;
        liar = *real;
        liar.C_GetAttributeValue = liar_GetAttributeValue;
        liar.C_WrapKey = liar_WrapKey;
    }
    *list = &liar;
    return CKR_OK;
}
