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

static PyMethodDef methods[] = {
    {"deepseek_hash", deepseek_hash, METH_VARARGS, "DeepSeekHashV1 of a bytes-like object (32 bytes)."},
    {"deepseek_search", deepseek_search, METH_VARARGS,
     "deepseek_search(prefix, target, start, stop): the first n in [start, stop) whose "
     "DeepSeekHashV1(prefix + decimal(n)) equals target, or -1."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "powgate._native", "DeepSeekHashV1 in C (see powgate._deepseek_hash).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
