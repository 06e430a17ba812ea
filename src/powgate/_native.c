/*
 * powgate._native: DeepSeekHashV1 in C, for solvers and benchmarks.
 *
 * DeepSeekHashV1 is the SHA3-256 sponge (rate 136, padding 0x06 ... 0x80)
 * over Keccak-f[1600] reduced to rounds 1..23 (round 0 skipped). The
 * definition, and the oracle the tests compare this file with, is
 * powgate/_deepseek_hash.py.
 *
 * deepseek_search() is the solver's loop: the prefix's full blocks are
 * absorbed once, each candidate costs one permutation (two when the number
 * spills into a second block), and the GIL is released while it runs.
 *
 * With OpenSSL's headers at build time (POWGATE_OPENSSL, see setup.py) it
 * also holds the hot path of ALTCHA v1 over SHA-256, the scheme every
 * refusal issues and most requests carry: sha256_hex(), HmacSha256 (an HMAC
 * key with its pads hashed once: hexdigest() and issue_v1(), a batch of
 * challenge documents), and canonical_v1() (a payload of the canonical shape
 * read in one pass); and sha256_search(), a native ALTCHA v1 solver's loop
 * for the benchmarks. Each has a pure-Python definition in powgate that
 * gives the same bytes (tests/unit/test_core_native.py holds them to it);
 * this file only removes the interpreter from the loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define RATE 136
#define DIGEST 32
#define FIRST_ROUND 1
/* A decimal answer below 2^63 has at most 19 digits. */
#define MAX_DIGITS 20

static const uint64_t RC[24] = {
    0x0000000000000001ULL, 0x0000000000008082ULL, 0x800000000000808AULL, 0x8000000080008000ULL,
    0x000000000000808BULL, 0x0000000080000001ULL, 0x8000000080008081ULL, 0x8000000000008009ULL,
    0x000000000000008AULL, 0x0000000000000088ULL, 0x0000000080008009ULL, 0x000000008000000AULL,
    0x000000008000808BULL, 0x800000000000008BULL, 0x8000000000008089ULL, 0x8000000000008003ULL,
    0x8000000000008002ULL, 0x8000000000000080ULL, 0x000000000000800AULL, 0x800000008000000AULL,
    0x8000000080008081ULL, 0x8000000000008080ULL, 0x0000000080000001ULL, 0x8000000080008008ULL,
};
/* rho offsets and pi order, walking the lanes from (1, 0). */
static const int ROTC[24] = {1, 3, 6, 10, 15, 21, 28, 36, 45, 55, 2, 14,
                             27, 41, 56, 8, 25, 43, 62, 18, 39, 61, 20, 44};
static const int PILN[24] = {10, 7, 11, 17, 18, 3, 5, 16, 8, 21, 24, 4,
                             15, 23, 19, 13, 12, 2, 20, 14, 22, 9, 6, 1};

#define ROTL(x, n) (((x) << (n)) | ((x) >> (64 - (n))))

static void keccak_f(uint64_t st[25], int first_round) {
    uint64_t bc[5], t;
    for (int round = first_round; round < 24; round++) {
        for (int i = 0; i < 5; i++) bc[i] = st[i] ^ st[i + 5] ^ st[i + 10] ^ st[i + 15] ^ st[i + 20];
        for (int i = 0; i < 5; i++) {
            t = bc[(i + 4) % 5] ^ ROTL(bc[(i + 1) % 5], 1);
            for (int j = 0; j < 25; j += 5) st[j + i] ^= t;
        }
        t = st[1];
        for (int i = 0; i < 24; i++) {
            int j = PILN[i];
            bc[0] = st[j];
            st[j] = ROTL(t, ROTC[i]);
            t = bc[0];
        }
        for (int j = 0; j < 25; j += 5) {
            for (int i = 0; i < 5; i++) bc[i] = st[j + i];
            for (int i = 0; i < 5; i++) st[j + i] ^= (~bc[(i + 1) % 5]) & bc[(i + 2) % 5];
        }
        st[0] ^= RC[round];
    }
}

static uint64_t load64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* XORs one rate-sized block into the state and permutes. */
static void absorb_block(uint64_t st[25], const uint8_t *block) {
    for (int i = 0; i < RATE / 8; i++) st[i] ^= load64(block + 8 * i);
    keccak_f(st, FIRST_ROUND);
}

/* Finishes a sponge whose full blocks are in `st`: `tail` (< RATE bytes) is
 * the rest of the message. Writes the digest. `st` is consumed. */
static void finish(uint64_t st[25], const uint8_t *tail, size_t len, uint8_t out[DIGEST]) {
    uint8_t block[RATE];
    memcpy(block, tail, len);
    memset(block + len, 0, RATE - len);
    block[len] ^= 0x06;
    block[RATE - 1] ^= 0x80;
    absorb_block(st, block);
    for (int i = 0; i < DIGEST / 8; i++) {
        for (int k = 0; k < 8; k++) out[8 * i + k] = (uint8_t)(st[i] >> (8 * k));
    }
}

static void hash_bytes(const uint8_t *data, size_t len, uint8_t out[DIGEST]) {
    uint64_t st[25] = {0};
    size_t full = len - len % RATE;
    for (size_t off = 0; off < full; off += RATE) absorb_block(st, data + off);
    finish(st, data + full, len - full, out);
}

static PyObject *deepseek_hash(PyObject *self, PyObject *args) {
    Py_buffer data;
    uint8_t out[DIGEST];
    (void)self;
    if (!PyArg_ParseTuple(args, "y*:deepseek_hash", &data)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    hash_bytes((const uint8_t *)data.buf, (size_t)data.len, out);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize((const char *)out, DIGEST);
}

/* Writes the decimal digits of n at p; returns how many. */
static int put_decimal(uint8_t *p, unsigned long long n) {
    char tmp[MAX_DIGITS];
    int len = 0;
    do {
        tmp[len++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    for (int i = 0; i < len; i++) p[i] = (uint8_t)tmp[len - 1 - i];
    return len;
}

static long long search(const uint8_t *prefix, size_t len, const uint8_t target[DIGEST],
                        long long start, long long stop) {
    uint64_t mid[25] = {0}, st[25];
    uint8_t tail[RATE + MAX_DIGITS];
    uint8_t out[DIGEST];
    size_t full = len - len % RATE;
    size_t rest = len - full;
    for (size_t off = 0; off < full; off += RATE) absorb_block(mid, prefix + off);
    memcpy(tail, prefix + full, rest);
    for (long long n = start; n < stop; n++) {
        int digits = put_decimal(tail + rest, (unsigned long long)n);
        size_t used = rest + (size_t)digits;
        memcpy(st, mid, sizeof st);
        if (used >= RATE) {
            /* The number spills over the block boundary. */
            absorb_block(st, tail);
            finish(st, tail + RATE, used - RATE, out);
        } else {
            finish(st, tail, used, out);
        }
        if (memcmp(out, target, DIGEST) == 0) return n;
    }
    return -1;
}

static PyObject *deepseek_search(PyObject *self, PyObject *args) {
    Py_buffer prefix, target;
    long long start, stop, found;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*LL:deepseek_search", &prefix, &target, &start, &stop)) return NULL;
    if (target.len != DIGEST || start < 0) {
        PyBuffer_Release(&prefix);
        PyBuffer_Release(&target);
        PyErr_SetString(PyExc_ValueError, "target must be 32 bytes and start non-negative");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    found = search((const uint8_t *)prefix.buf, (size_t)prefix.len, (const uint8_t *)target.buf,
                   start, stop);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&target);
    return PyLong_FromLongLong(found);
}

#ifdef POWGATE_OPENSSL
/* OpenSSL 3 deprecates the low-level SHA-256 calls in favour of EVP, whose
 * provider dispatch and allocations cost more than the hashing of a few
 * blocks does here. They remain part of its API. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>

#define SHA_BLOCK 64
#define SHA_HEX (2 * SHA256_DIGEST_LENGTH)

static const char HEX[] = "0123456789abcdef";

static void to_hex(const uint8_t *in, size_t len, char *out) {
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = HEX[in[i] >> 4];
        out[2 * i + 1] = HEX[in[i] & 15];
    }
}

static void sha256_to_hex(const uint8_t *data, size_t len, char out[SHA_HEX]) {
    /* Not the one-shot SHA256(): in OpenSSL 3 it fetches the algorithm from
     * a provider on every call, which costs more than these few blocks. */
    SHA256_CTX ctx;
    uint8_t digest[SHA256_DIGEST_LENGTH];
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, data, len);
    SHA256_Final(digest, &ctx);
    to_hex(digest, sizeof digest, out);
}

static PyObject *sha256_hex(PyObject *self, PyObject *arg) {
    Py_buffer data;
    char out[SHA_HEX];
    (void)self;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    sha256_to_hex((const uint8_t *)data.buf, (size_t)data.len, out);
    PyBuffer_Release(&data);
    return PyUnicode_FromStringAndSize(out, SHA_HEX);
}

/* -- ALTCHA v1 search: what a native solver does ------------------------------ */

/* The first n in [start, stop) with SHA-256(prefix + decimal(n)) == target,
 * or -1. What a tuned native solver does: the prefix is absorbed once, and
 * when its last block is completed by the number's leading digits, the
 * state after that block is kept until those digits change, so a candidate
 * usually costs one compression (ALTCHA's salts are ~63 bytes: without this
 * every candidate would cost two). The decimal counter is incremented in
 * place. python -m bench schemes measures it as the native SHA-256 rate. */
static long long sha256_find(const uint8_t *prefix, size_t len, const uint8_t *target,
                             long long start, long long stop) {
    SHA256_CTX base, mid, ctx;
    uint8_t digest[SHA256_DIGEST_LENGTH];
    char digits[MAX_DIGITS];
    /* Digits that complete the prefix's last block. */
    const int need = SHA_BLOCK - (int)(len % SHA_BLOCK);
    int width, mid_valid = 0;
    if (start >= stop) return -1;
    SHA256_Init(&base);
    SHA256_Update(&base, prefix, len);
    width = snprintf(digits, sizeof digits, "%lld", start);
    for (long long n = start; n < stop; n++) {
        if (width > need) {
            if (!mid_valid) {
                mid = base;
                SHA256_Update(&mid, digits, (size_t)need);
                mid_valid = 1;
            }
            ctx = mid;
            SHA256_Update(&ctx, digits + need, (size_t)(width - need));
        } else {
            ctx = base;
            SHA256_Update(&ctx, digits, (size_t)width);
        }
        SHA256_Final(digest, &ctx);
        if (memcmp(digest, target, SHA256_DIGEST_LENGTH) == 0) return n;
        /* digits += 1, carrying; a carry out of the first digit widens it. */
        int i = width - 1;
        while (i >= 0 && digits[i] == '9') digits[i--] = '0';
        if (i >= 0) {
            digits[i]++;
        } else {
            memmove(digits + 1, digits, (size_t)width);
            digits[0] = '1';
            width++;
        }
        if (i < need) mid_valid = 0; /* a digit of the kept block changed */
    }
    return -1;
}

static PyObject *sha256_search(PyObject *self, PyObject *args) {
    Py_buffer prefix, target;
    long long start, stop, found;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*LL:sha256_search", &prefix, &target, &start, &stop)) return NULL;
    if (target.len != SHA256_DIGEST_LENGTH || start < 0) {
        PyBuffer_Release(&prefix);
        PyBuffer_Release(&target);
        PyErr_SetString(PyExc_ValueError, "target must be 32 bytes and start non-negative");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    found = sha256_find((const uint8_t *)prefix.buf, (size_t)prefix.len,
                        (const uint8_t *)target.buf, start, stop);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&target);
    return PyLong_FromLongLong(found);
}

/* -- HmacSha256: a key whose inner and outer pads are hashed once ------------ */

typedef struct {
    PyObject_HEAD
    SHA256_CTX inner;
    SHA256_CTX outer;
} HmacObject;

static int hmac_init(HmacObject *self, PyObject *args, PyObject *kwargs) {
    Py_buffer key;
    uint8_t block[SHA_BLOCK], pad[SHA_BLOCK];
    static char *names[] = {"key", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*:HmacSha256", names, &key)) return -1;
    memset(block, 0, sizeof block);
    if ((size_t)key.len > SHA_BLOCK) {
        SHA256_CTX ctx;
        SHA256_Init(&ctx);
        SHA256_Update(&ctx, key.buf, (size_t)key.len);
        SHA256_Final(block, &ctx);
    } else {
        memcpy(block, key.buf, (size_t)key.len);
    }
    PyBuffer_Release(&key);
    for (int i = 0; i < SHA_BLOCK; i++) pad[i] = block[i] ^ 0x36;
    SHA256_Init(&self->inner);
    SHA256_Update(&self->inner, pad, SHA_BLOCK);
    for (int i = 0; i < SHA_BLOCK; i++) pad[i] = block[i] ^ 0x5c;
    SHA256_Init(&self->outer);
    SHA256_Update(&self->outer, pad, SHA_BLOCK);
    OPENSSL_cleanse(block, sizeof block);
    OPENSSL_cleanse(pad, sizeof pad);
    return 0;
}

static void hmac_dealloc(HmacObject *self) {
    OPENSSL_cleanse(&self->inner, sizeof self->inner);
    OPENSSL_cleanse(&self->outer, sizeof self->outer);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void hmac_hex(const HmacObject *self, const uint8_t *msg, size_t len, char out[SHA_HEX]) {
    SHA256_CTX ctx = self->inner;
    uint8_t digest[SHA256_DIGEST_LENGTH];
    SHA256_Update(&ctx, msg, len);
    SHA256_Final(digest, &ctx);
    ctx = self->outer;
    SHA256_Update(&ctx, digest, sizeof digest);
    SHA256_Final(digest, &ctx);
    to_hex(digest, sizeof digest, out);
}

static PyObject *hmac_hexdigest(HmacObject *self, PyObject *arg) {
    Py_buffer msg;
    char out[SHA_HEX];
    if (PyObject_GetBuffer(arg, &msg, PyBUF_SIMPLE) < 0) return NULL;
    hmac_hex(self, (const uint8_t *)msg.buf, (size_t)msg.len, out);
    PyBuffer_Release(&msg);
    return PyUnicode_FromStringAndSize(out, SHA_HEX);
}

/* What json.dumps writes for s unchanged: printable ASCII but '"' and '\\'. */
static int json_plain(const char *s, Py_ssize_t len) {
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') return 0;
    }
    return 1;
}

#define NONCE_BYTES 12
#define RANDOM_BYTES (NONCE_BYTES + 8)

/* issue_v1(name, head, difficulty, random): one document per 20 random bytes:
 * {"algorithm":name,"challenge":H,"maxnumber":difficulty,"salt":S,"signature":M}
 * with S = hex(12 bytes) + head, n = the next 8 bytes (big-endian) mod
 * difficulty, H = SHA-256(S + decimal(n)) and M = HMAC(H), both in hex:
 * powgate.Issuer's batch, byte for byte. */
static PyObject *hmac_issue_v1(HmacObject *self, PyObject *args) {
    const char *name, *head;
    Py_ssize_t name_len, head_len;
    unsigned long long difficulty;
    Py_buffer random;
    PyObject *list = NULL;
    if (!PyArg_ParseTuple(args, "s#s#Ky*:issue_v1", &name, &name_len, &head, &head_len,
                          &difficulty, &random))
        return NULL;
    if (difficulty < 1 || random.len % RANDOM_BYTES || !json_plain(name, name_len) ||
        !json_plain(head, head_len) || head_len > 4096 || name_len > 64) {
        PyErr_SetString(PyExc_ValueError, "issue_v1: arguments out of range");
        goto done;
    }
    Py_ssize_t count = random.len / RANDOM_BYTES;
    list = PyList_New(count);
    if (list == NULL) goto done;
    /* The salt, then room for the number: what the work hashes. */
    size_t salt_len = 2 * NONCE_BYTES + (size_t)head_len;
    uint8_t *work = PyMem_Malloc(salt_len + MAX_DIGITS);
    if (work == NULL) {
        Py_CLEAR(list);
        PyErr_NoMemory();
        goto done;
    }
    memcpy(work + 2 * NONCE_BYTES, head, (size_t)head_len);
    char maxnumber[MAX_DIGITS];
    int maxnumber_len = put_decimal((uint8_t *)maxnumber, difficulty);
    const uint8_t *raw = (const uint8_t *)random.buf;
    for (Py_ssize_t i = 0; i < count; i++, raw += RANDOM_BYTES) {
        char challenge[SHA_HEX], signature[SHA_HEX];
        uint64_t value = 0;
        to_hex(raw, NONCE_BYTES, (char *)work);
        for (int k = NONCE_BYTES; k < RANDOM_BYTES; k++) value = (value << 8) | raw[k];
        int digits = put_decimal(work + salt_len, value % difficulty);
        sha256_to_hex(work, salt_len + (size_t)digits, challenge);
        hmac_hex(self, (const uint8_t *)challenge, SHA_HEX, signature);
        static const char K1[] = "{\"algorithm\":\"", K2[] = "\",\"challenge\":\"",
                          K3[] = "\",\"maxnumber\":", K4[] = ",\"salt\":\"",
                          K5[] = "\",\"signature\":\"", K6[] = "\"}";
        size_t size = (sizeof K1 - 1) + (size_t)name_len + (sizeof K2 - 1) + SHA_HEX +
                      (sizeof K3 - 1) + (size_t)maxnumber_len + (sizeof K4 - 1) + salt_len +
                      (sizeof K5 - 1) + SHA_HEX + (sizeof K6 - 1);
        PyObject *doc = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
        if (doc == NULL) {
            Py_CLEAR(list);
            break;
        }
        char *p = PyBytes_AS_STRING(doc);
#define PUT(src, n)              \
    do {                         \
        memcpy(p, (src), (n));   \
        p += (n);                \
    } while (0)
        PUT(K1, sizeof K1 - 1);
        PUT(name, (size_t)name_len);
        PUT(K2, sizeof K2 - 1);
        PUT(challenge, SHA_HEX);
        PUT(K3, sizeof K3 - 1);
        PUT(maxnumber, (size_t)maxnumber_len);
        PUT(K4, sizeof K4 - 1);
        PUT(work, salt_len);
        PUT(K5, sizeof K5 - 1);
        PUT(signature, SHA_HEX);
        PUT(K6, sizeof K6 - 1);
#undef PUT
        PyList_SET_ITEM(list, i, doc);
    }
    PyMem_Free(work);
done:
    PyBuffer_Release(&random);
    return list;
}

static PyMethodDef hmac_methods[] = {
    {"hexdigest", (PyCFunction)hmac_hexdigest, METH_O,
     "hexdigest(message): HMAC-SHA256 of message under the key, lowercase hex."},
    {"issue_v1", (PyCFunction)hmac_issue_v1, METH_VARARGS,
     "issue_v1(name, head, difficulty, random): a batch of ALTCHA v1 challenge documents "
     "(JSON bytes), one per 20 bytes of random, signed with the key."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HmacType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "powgate._native.HmacSha256",
    .tp_basicsize = sizeof(HmacObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "HmacSha256(key): HMAC-SHA256 under one key, its pads hashed once.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)hmac_init,
    .tp_dealloc = (destructor)hmac_dealloc,
    .tp_methods = hmac_methods,
};

/* -- canonical_v1: a payload of the canonical shape, read in one pass ----------- */

static const signed char B64[256] = {
    ['A'] = 1,  ['B'] = 2,  ['C'] = 3,  ['D'] = 4,  ['E'] = 5,  ['F'] = 6,  ['G'] = 7,
    ['H'] = 8,  ['I'] = 9,  ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14,
    ['O'] = 15, ['P'] = 16, ['Q'] = 17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21,
    ['V'] = 22, ['W'] = 23, ['X'] = 24, ['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28,
    ['c'] = 29, ['d'] = 30, ['e'] = 31, ['f'] = 32, ['g'] = 33, ['h'] = 34, ['i'] = 35,
    ['j'] = 36, ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] = 41, ['p'] = 42,
    ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48, ['w'] = 49,
    ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56,
    ['4'] = 57, ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['+'] = 63,
    ['/'] = 64,
}; /* value + 1; 0: not in the alphabet */

/* Standard base64 with its padding, nothing else (no newlines, no '=' inside):
 * what binascii.a2b_base64(strict_mode=True) decodes to the same bytes. Returns
 * the decoded length, or -1. Whole quads first, four table lookups and one
 * test each; the last quad, which may be padded, on its own. */
static Py_ssize_t b64_decode(const uint8_t *in, Py_ssize_t len, uint8_t *out) {
    if (len == 0 || len % 4) return -1;
    Py_ssize_t n = 0, last = len - 4;
    for (Py_ssize_t i = 0; i < last; i += 4) {
        int a = B64[in[i]], b = B64[in[i + 1]], c = B64[in[i + 2]], d = B64[in[i + 3]];
        if (!a || !b || !c || !d) return -1;
        uint32_t v = ((uint32_t)(a - 1) << 18) | ((uint32_t)(b - 1) << 12) |
                     ((uint32_t)(c - 1) << 6) | (uint32_t)(d - 1);
        out[n] = (uint8_t)(v >> 16);
        out[n + 1] = (uint8_t)(v >> 8);
        out[n + 2] = (uint8_t)v;
        n += 3;
    }
    const uint8_t *q = in + last;
    Py_ssize_t pad = (q[3] == '=') + (q[3] == '=' && q[2] == '=');
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        int c = B64[q[k]];
        if (c == 0) {
            if (k < 4 - pad) return -1;
            c = 1; /* padding: zero bits */
        }
        v = (v << 6) | (uint32_t)(c - 1);
    }
    out[n++] = (uint8_t)(v >> 16);
    if (pad < 2) out[n++] = (uint8_t)(v >> 8);
    if (pad < 1) out[n++] = (uint8_t)v;
    return n;
}

typedef struct {
    const uint8_t *p, *end;
} Cursor;

static int take(Cursor *c, const char *lit) {
    size_t n = strlen(lit);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0) return 0;
    c->p += n;
    return 1;
}

enum { HEXLOW = 1, DIGIT = 2, NAME = 4, VALUE = 8, TOKEN = 16, FACTOR = 32 };
static unsigned char CLASS[256];

static void classes_init(void) {
    for (int c = 0; c < 256; c++) {
        unsigned char k = 0;
        int alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) k |= HEXLOW;
        if (c >= '0' && c <= '9') k |= DIGIT | FACTOR;
        if (alnum || c == '-') k |= NAME;                                /* [A-Za-z0-9-] */
        if (alnum || c == '.' || c == '_' || c == '~' || c == '/' || c == ':' || c == '-')
            k |= VALUE;                                                  /* [A-Za-z0-9._~/:-] */
        if (alnum || c == '_' || c == '-') k |= TOKEN;                   /* [A-Za-z0-9_-] */
        if (c == '.') k |= FACTOR;                                       /* [0-9.] */
        CLASS[c] = k;
    }
}

/* Advances over characters of `cls`; fails outside [min, max] of them. */
static int span(Cursor *c, unsigned char cls, Py_ssize_t min, Py_ssize_t max, const uint8_t **start,
                Py_ssize_t *len) {
    const uint8_t *s = c->p;
    while (c->p < c->end && (CLASS[*c->p] & cls)) c->p++;
    *start = s;
    *len = c->p - s;
    return *len >= min && *len <= max;
}

static long long decimal(const uint8_t *s, Py_ssize_t len) {
    long long v = 0;
    for (Py_ssize_t i = 0; i < len; i++) v = v * 10 + (s[i] - '0');
    return v;
}

static PyObject *text(const uint8_t *s, Py_ssize_t len) {
    return PyUnicode_DecodeASCII((const char *)s, len, NULL);
}

/* The fields of a payload of the canonical shape: spans of the decoded bytes. */
typedef struct {
    const uint8_t *name, *challenge, *number, *salt, *salt_end, *expires, *kid, *difficulty, *sig;
    const uint8_t *binding, *client, *factor;
    Py_ssize_t name_n, challenge_n, number_n, expires_n, kid_n, difficulty_n, sig_n;
    Py_ssize_t binding_n, client_n, factor_n;
} V1Fields;

#define MAX_PAYLOAD 2048

/* The payload's bytes decoded from base64 into raw (MAX_PAYLOAD bytes): their
 * length; -1 when it cannot be canonical (too long, not ASCII, not strict
 * base64); -2 with an exception set (not text nor bytes-like). */
static Py_ssize_t payload_bytes(PyObject *arg, uint8_t *raw) {
    Py_ssize_t size;
    if (PyUnicode_Check(arg)) {
        if (!PyUnicode_IS_ASCII(arg)) return -1;
        Py_ssize_t len = PyUnicode_GET_LENGTH(arg);
        return len <= MAX_PAYLOAD ? b64_decode((const uint8_t *)PyUnicode_DATA(arg), len, raw) : -1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return -2;
    size = view.len <= MAX_PAYLOAD ? b64_decode((const uint8_t *)view.buf, view.len, raw) : -1;
    PyBuffer_Release(&view);
    return size;
}

/* Reads raw[0:size] as powgate._protocol.canonical_v1_fields does (its
 * pattern, field by field); 1 when it has that shape, 0 otherwise. */
static int read_v1(const uint8_t *raw, Py_ssize_t size, V1Fields *f) {
    Cursor c = {raw, raw + size};
    const uint8_t *nonce;
    Py_ssize_t nonce_n;
    f->binding = f->client = f->factor = NULL;
    f->binding_n = f->client_n = f->factor_n = 0;
    if (!take(&c, "{\"algorithm\":\"") || !span(&c, NAME, 1, 32, &f->name, &f->name_n) ||
        !take(&c, "\",\"challenge\":\"") ||
        !span(&c, HEXLOW, 1, 128, &f->challenge, &f->challenge_n) ||
        !take(&c, "\",\"number\":") || !span(&c, DIGIT, 1, 16, &f->number, &f->number_n) ||
        (f->number_n > 1 && f->number[0] == '0') || !take(&c, ",\"salt\":\""))
        return 0;
    f->salt = c.p;
    if (!span(&c, HEXLOW, 0, 2048, &nonce, &nonce_n) || !take(&c, "?expires=") ||
        !span(&c, DIGIT, 1, 18, &f->expires, &f->expires_n) || !take(&c, "&kid=") ||
        !span(&c, VALUE, 0, 2048, &f->kid, &f->kid_n) || !take(&c, "&max=") ||
        !span(&c, DIGIT, 1, 18, &f->difficulty, &f->difficulty_n) || !take(&c, "&"))
        return 0;
    if (take(&c, "bind=")) {
        if (!span(&c, VALUE, 0, 2048, &f->binding, &f->binding_n) || !take(&c, "&")) return 0;
    }
    if (take(&c, "ck=")) {
        if (!span(&c, TOKEN, 0, 2048, &f->client, &f->client_n) || !take(&c, "&f=") ||
            !span(&c, FACTOR, 0, 2048, &f->factor, &f->factor_n) || !take(&c, "&"))
            return 0;
    }
    f->salt_end = c.p;
    if (!take(&c, "\",\"signature\":\"") || !span(&c, HEXLOW, 1, 128, &f->sig, &f->sig_n) ||
        !take(&c, "\"}") || c.p != c.end)
        return 0;
    /* JSON's integers beyond 2**53 are not the number the general path reads. */
    return decimal(f->number, f->number_n) < (1LL << 53);
}

static PyObject *text_or_none(const uint8_t *s, Py_ssize_t len) {
    return s != NULL ? text(s, len) : Py_NewRef(Py_None);
}

/* canonical_v1(payload): powgate._protocol.canonical_v1_fields, in C. */
static PyObject *canonical_v1(PyObject *self, PyObject *arg) {
    uint8_t raw[MAX_PAYLOAD];
    V1Fields f;
    (void)self;
    Py_ssize_t size = payload_bytes(arg, raw);
    if (size == -2) return NULL;
    if (size < 0 || !read_v1(raw, size, &f)) Py_RETURN_NONE;

    /* The work's input: the salt (ending in '&' by its shape) and the number. */
    Py_ssize_t salt_n = f.salt_end - f.salt;
    PyObject *work = PyBytes_FromStringAndSize(NULL, salt_n + f.number_n);
    if (work == NULL) return NULL;
    memcpy(PyBytes_AS_STRING(work), f.salt, (size_t)salt_n);
    memcpy(PyBytes_AS_STRING(work) + salt_n, f.number, (size_t)f.number_n);
    PyObject *params = Py_BuildValue(
        "(LNLNNN)", decimal(f.expires, f.expires_n), text(f.kid, f.kid_n),
        decimal(f.difficulty, f.difficulty_n), text_or_none(f.binding, f.binding_n),
        text_or_none(f.client, f.client_n), text_or_none(f.factor, f.factor_n));
    if (params == NULL) {
        Py_DECREF(work);
        return NULL;
    }
    return Py_BuildValue("(NNNNN)", text(f.name, f.name_n), text(f.challenge, f.challenge_n),
                         text(f.sig, f.sig_n), work, params);
}

/* check_v1(payload, signers, now): an ALTCHA v1 / SHA-256 payload of the
 * canonical shape checked in one call, in powgate.Verifier._check_v1's order
 * (key, signature, expiry, work); everything but the scope.
 *
 * signers maps a key id (str) to (HmacSha256, not_after: float, bad_signature,
 * retired): the key's signing state, when the ring stops accepting it, and
 * what to return as it is when the signature differs and when the key is
 * retired. Returns None when the verifier must decide in Python (not the
 * canonical shape, another algorithm, a key id not in signers); one of those
 * two objects; or (code, difficulty, expires,
 * binding, client, factor, replay_key) with code 0 (signed, fresh, the work
 * right: replay_key is the challenge's 32 bytes), 1 (expired) or 2 (wrong
 * number), replay_key None unless 0. The signature is compared in constant
 * time (CRYPTO_memcmp), as hmac.compare_digest does. */
static PyObject *check_v1(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint8_t raw[MAX_PAYLOAD];
    V1Fields f;
    (void)self;
    if (nargs != 3 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "check_v1(payload, signers: dict, now: float)");
        return NULL;
    }
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    Py_ssize_t size = payload_bytes(args[0], raw);
    if (size == -2) return NULL;
    if (size < 0 || !read_v1(raw, size, &f) || f.name_n != 7 || memcmp(f.name, "SHA-256", 7) != 0)
        Py_RETURN_NONE;

    PyObject *kid = text(f.kid, f.kid_n);
    if (kid == NULL) return NULL;
    PyObject *entry = PyDict_GetItemWithError(args[1], kid); /* borrowed */
    Py_DECREF(kid);
    if (entry == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4 ||
        !PyObject_TypeCheck(PyTuple_GET_ITEM(entry, 0), &HmacType) ||
        !PyFloat_CheckExact(PyTuple_GET_ITEM(entry, 1))) {
        PyErr_SetString(PyExc_TypeError, "check_v1: a signer is (HmacSha256, float, object, object)");
        return NULL;
    }
    if (now > PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(entry, 1)))
        return Py_NewRef(PyTuple_GET_ITEM(entry, 3)); /* the key is retired */
    char mac[SHA_HEX];
    hmac_hex((const HmacObject *)PyTuple_GET_ITEM(entry, 0), f.challenge, (size_t)f.challenge_n, mac);
    if (f.sig_n != SHA_HEX || CRYPTO_memcmp(mac, f.sig, SHA_HEX) != 0)
        return Py_NewRef(PyTuple_GET_ITEM(entry, 2));

    long long expires = decimal(f.expires, f.expires_n);
    long long difficulty = decimal(f.difficulty, f.difficulty_n);
    int code = 1;
    uint8_t digest[SHA256_DIGEST_LENGTH];
    /* Python compares an int with a float exactly; below 2**53 a double does too,
     * and an expiry above that is ahead of any clock. */
    if (expires >= (1LL << 53) || now <= (double)expires) {
        /* The work: SHA-256 of the salt and the number, against the challenge. */
        char work_hex[SHA_HEX];
        SHA256_CTX ctx;
        SHA256_Init(&ctx);
        SHA256_Update(&ctx, f.salt, (size_t)(f.salt_end - f.salt));
        SHA256_Update(&ctx, f.number, (size_t)f.number_n);
        SHA256_Final(digest, &ctx);
        to_hex(digest, sizeof digest, work_hex);
        code = f.challenge_n == SHA_HEX && memcmp(work_hex, f.challenge, SHA_HEX) == 0 ? 0 : 2;
    }
    PyObject *out = PyTuple_New(7);
    if (out == NULL) return NULL;
    PyObject *items[7] = {
        PyLong_FromLong(code),
        PyLong_FromLongLong(difficulty),
        PyLong_FromLongLong(expires),
        text_or_none(f.binding, f.binding_n),
        text_or_none(f.client, f.client_n),
        text_or_none(f.factor, f.factor_n),
        code == 0 ? PyBytes_FromStringAndSize((const char *)digest, sizeof digest)
                  : Py_NewRef(Py_None),
    };
    for (int i = 0; i < 7; i++) {
        if (items[i] == NULL) {
            for (int k = 0; k < 7; k++) Py_XDECREF(items[k]);
            Py_DECREF(out);
            return NULL;
        }
    }
    for (int i = 0; i < 7; i++) PyTuple_SET_ITEM(out, i, items[i]);
    return out;
}
#endif /* POWGATE_OPENSSL */

static PyMethodDef methods[] = {
    {"deepseek_hash", deepseek_hash, METH_VARARGS, "DeepSeekHashV1 of a bytes-like object (32 bytes)."},
    {"deepseek_search", deepseek_search, METH_VARARGS,
     "deepseek_search(prefix, target, start, stop): the first n in [start, stop) whose "
     "DeepSeekHashV1(prefix + decimal(n)) equals target, or -1."},
#ifdef POWGATE_OPENSSL
    {"sha256_hex", sha256_hex, METH_O, "SHA-256 of a bytes-like object, lowercase hex."},
    {"sha256_search", sha256_search, METH_VARARGS,
     "sha256_search(prefix, target, start, stop): the first n in [start, stop) whose "
     "SHA-256(prefix + decimal(n)) equals target, or -1."},
    {"canonical_v1", canonical_v1, METH_O,
     "canonical_v1(payload): powgate._protocol.canonical_v1_fields, in C (None: not canonical)."},
    {"check_v1", (PyCFunction)(void (*)(void))check_v1, METH_FASTCALL,
     "check_v1(payload, signers, now): an ALTCHA v1 / SHA-256 payload of the canonical shape "
     "checked in one call (see powgate._verify; None: decide in Python)."},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "powgate._native", "DeepSeekHashV1 in C (see powgate._deepseek_hash).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
#ifdef POWGATE_OPENSSL
    classes_init();
    if (PyType_Ready(&HmacType) < 0 || PyModule_AddObjectRef(m, "HmacSha256", (PyObject *)&HmacType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
