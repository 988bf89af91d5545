// c-counter: the `counter` example written in C against the Roam ABI v1
// (docs/abi.md), proving the ABI is language-neutral.
//
// Build and run:
//
//   clang --target=wasm32-wasi -O2 -mexec-model=reactor -o c-counter.wasm examples/c-counter/counter.c
//   roam run c-counter.wasm --listen 127.0.0.1:8080
//   curl -X POST localhost:8080/apples        # {"path":"/apples","count":1}
//
// State is a small table of (path, count) in linear memory; Roam captures it
// like any other memory.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IMPORT(name) __attribute__((import_module("roam"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

IMPORT("log") void roam_log(int32_t level, const char *ptr, int32_t len);

#define MAX_PATHS 256
#define MAX_PATH 128

static struct { char path[MAX_PATH]; uint64_t count; } table[MAX_PATHS];
static int used;
static char *response;  // kept until the next call, as the ABI requires

EXPORT("roam_abi_version") int32_t roam_abi_version(void) { return 1; }

EXPORT("roam_alloc") int32_t roam_alloc(int32_t len) {
    return (int32_t)(uintptr_t)malloc(len > 0 ? (size_t)len : 1);
}

EXPORT("roam_init") void roam_init(void) {
    const char *msg = "c-counter ready";
    roam_log(2, msg, (int32_t)strlen(msg));
}

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void wr32(uint8_t *p, uint32_t v) {
    p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}

// Read a length-prefixed string at *off; returns its start, or NULL if it overruns.
static const uint8_t *field(const uint8_t *buf, uint32_t len, uint32_t *off, uint32_t *flen) {
    if (*off + 4 > len) return NULL;
    *flen = rd32(buf + *off);
    if (*flen > len - *off - 4) return NULL;
    const uint8_t *start = buf + *off + 4;
    *off += 4 + *flen;
    return start;
}

static int64_t respond(uint32_t status, const char *body) {
    static const char ctype_k[] = "content-type", ctype_v[] = "application/json";
    uint32_t blen = (uint32_t)strlen(body);
    uint32_t total = 4 + 4 + 4 + sizeof ctype_k - 1 + 4 + sizeof ctype_v - 1 + 4 + blen;
    free(response);
    response = malloc(total);
    uint8_t *p = (uint8_t *)response;
    wr32(p, status); p += 4;
    wr32(p, 1); p += 4;
    wr32(p, sizeof ctype_k - 1); p += 4; memcpy(p, ctype_k, sizeof ctype_k - 1); p += sizeof ctype_k - 1;
    wr32(p, sizeof ctype_v - 1); p += 4; memcpy(p, ctype_v, sizeof ctype_v - 1); p += sizeof ctype_v - 1;
    wr32(p, blen); p += 4; memcpy(p, body, blen);
    return (int64_t)((uint64_t)(uintptr_t)response << 32 | total);
}

static uint64_t *slot(const char *path, int create) {
    for (int i = 0; i < used; i++)
        if (strcmp(table[i].path, path) == 0) return &table[i].count;
    if (!create || used == MAX_PATHS) return NULL;
    strcpy(table[used].path, path);
    table[used].count = 0;
    return &table[used++].count;
}

EXPORT("roam_http") int64_t roam_http(int32_t ptr, int32_t len) {
    uint8_t *req = (uint8_t *)(uintptr_t)ptr;
    uint32_t off = 0, mlen, plen;
    const uint8_t *method = field(req, (uint32_t)len, &off, &mlen);
    const uint8_t *path = field(req, (uint32_t)len, &off, &plen);
    char m[8] = {0}, p[MAX_PATH] = {0};
    int64_t result;
    if (!method || !path || mlen >= sizeof m || plen >= sizeof p) {
        result = respond(400, "{\"error\":\"bad request\"}");
    } else {
        memcpy(m, method, mlen);
        memcpy(p, path, plen);
        char body[MAX_PATH + 64];
        if (strcmp(m, "POST") == 0) {
            uint64_t *c = slot(p, 1);
            if (!c) {
                result = respond(507, "{\"error\":\"too many paths\"}");
            } else {
                ++*c;
                snprintf(body, sizeof body, "{\"path\":\"%s\",\"count\":%llu}", p, (unsigned long long)*c);
                result = respond(200, body);
            }
        } else if (strcmp(m, "GET") == 0) {
            uint64_t *c = slot(p, 0);
            snprintf(body, sizeof body, "{\"path\":\"%s\",\"count\":%llu}", p, (unsigned long long)(c ? *c : 0));
            result = respond(200, body);
        } else {
            result = respond(405, "{\"error\":\"use GET or POST\"}");
        }
    }
    free(req);
    return result;
}
