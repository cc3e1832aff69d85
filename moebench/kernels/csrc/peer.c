#include <math.h>
#include <stdint.h>
#include <string.h>

/* Insert (x, i) into the descending buffer val/idx of n <= k entries; equal values keep the older first. */
static inline void insert(float x, int64_t i, float* val, int64_t* idx, int64_t* n, int64_t k) {
    int64_t j = *n < k ? (*n)++ : k - 1;
    while (j > 0 && x > val[j - 1]) { val[j] = val[j - 1]; idx[j] = idx[j - 1]; j--; }
    val[j] = x; idx[j] = i;
}

/* Top k of the whole row, NaN skipped; returns how many it found (< k only with NaN in the row). */
static int64_t row_topk_scan(const float* s, int64_t R, int64_t k, float* val, int64_t* idx) {
    int64_t n = 0;
    for (int64_t r = 0; r < R; r++)
        if (n < k ? s[r] == s[r] : s[r] > val[k - 1]) insert(s[r], r, val, idx, &n, k);
    return n;
}

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
static inline v8f load8(const float* p) { v8f r; memcpy(&r, p, sizeof r); return r; }
#ifdef __AVX__
#include <immintrin.h>
static inline int mask_ge(v8f x, v8f t) { return _mm256_movemask_ps(_mm256_cmp_ps((__m256)x, (__m256)t, _CMP_GE_OQ)); }
#else
static inline int mask_ge(v8f x, v8f t) { int m = 0; for (int l = 0; l < 8; l++) m |= (x[l] >= t[l]) << l; return m; }
#endif
/* elementwise max that ignores a NaN in b */
static inline v8f max8(v8f a, v8f b) { v8i m = (a > b) | (b != b); return (v8f)(((v8i)a & m) | ((v8i)b & ~m)); }

/* Exact pruned top k of one row (k <= 16), sorted descending. The row is NG groups, group j = {j + NG*i},
   whose maxima are elementwise maxima of R/NG vectors. Any tau that k group maxima reach is reached by k
   scores, so it bounds the k-th largest score from below and only scores >= tau can be in the top k. A
   first tau: the least of the maxima of 16 disjoint sets of groups (16 groups reach it); BISECT halvings
   toward the largest maximum then raise it while k group maxima still reach it. The scores >= tau (about
   k of them on random rows), found by vector compares, enter the sorted buffer. Ties at tau may resolve
   to other, equal, scores. */
#define NG 64
#define BISECT 6
static void row_topk(const float* s, int64_t R, int64_t k, float* val, int64_t* idx) {
    int64_t n = 0;
    if (R % NG == 0 && k <= 16 && R >= 4 * NG) {
        v8f gm[NG / 8];
        for (int j = 0; j < NG / 8; j++) gm[j] = load8(s + 8 * j);
        for (int64_t r = NG; r < R; r += NG)
            for (int j = 0; j < NG / 8; j++) gm[j] = max8(gm[j], load8(s + r + 8 * j));
        v8f m1 = max8(max8(gm[0], gm[2]), max8(gm[4], gm[6])), m2 = max8(max8(gm[1], gm[3]), max8(gm[5], gm[7]));
        v8f top = max8(m1, m2);
        float tau = m1[0], hi = top[0];
        for (int l = 0; l < 8; l++) {
            tau = m1[l] < tau ? m1[l] : tau;
            tau = m2[l] < tau ? m2[l] : tau;
            hi = top[l] > hi ? top[l] : hi;
        }
        for (int it = 0; it < BISECT; it++) {  /* raise tau while >= k group maxima still reach it */
            float mid = tau + (hi - tau) * 0.5f;
            v8f mv = {mid, mid, mid, mid, mid, mid, mid, mid};
            v8i cnt = {0};
            for (int j = 0; j < NG / 8; j++) cnt -= gm[j] >= mv;
            int above = ((cnt[0] + cnt[1]) + (cnt[2] + cnt[3])) + ((cnt[4] + cnt[5]) + (cnt[6] + cnt[7]));
            if (above >= k) tau = mid; else hi = mid;
        }
        v8f tv = {tau, tau, tau, tau, tau, tau, tau, tau};
        for (int64_t r = 0; r < R; r += 8)  /* a vector compare per 8 scores; ~k of them pass */
            for (int m = mask_ge(load8(s + r), tv); m; m &= m - 1) {
                int64_t i = r + __builtin_ctz(m);
                if (n < k || s[i] > val[k - 1]) insert(s[i], i, val, idx, &n, k);
            }
        if (n == k) return;  /* else NaN spoilt the bounds: scan the whole row */
        n = 0;
    }
    for (n = row_topk_scan(s, R, k, val, idx); n < k; n++) { val[n] = -INFINITY; idx[n] = 0; }
}

typedef struct {
    const float* s; float* score; int64_t* out; const int64_t* pi; const int64_t* pj;
    int64_t H, T, R, K, C, lo, hi;
} topk_job;

/* rows (h, t) in [lo, hi); s is [H, 2, T, R]; score/out are [T, H, K]. */
static void* topk_run(void* arg) {
    topk_job* a = (topk_job*)arg;
    float v1[256], v2[256];
    int64_t i1[256], i2[256];
    for (int64_t row = a->lo; row < a->hi; row++) {
        int64_t h = row / a->T, t = row % a->T, n = 0;
        row_topk(a->s + ((h * 2) * a->T + t) * a->R, a->R, a->K, v1, i1);
        row_topk(a->s + ((h * 2 + 1) * a->T + t) * a->R, a->R, a->K, v2, i2);
        float* val = a->score + (t * a->H + h) * a->K;
        int64_t* idx = a->out + (t * a->H + h) * a->K;
        for (int64_t c = 0; c < a->C; c++) {
            float x = v1[a->pi[c]] + v2[a->pj[c]];
            if (n < a->K || x > val[a->K - 1]) insert(x, i1[a->pi[c]] * a->R + i2[a->pj[c]], val, idx, &n, a->K);
        }
    }
    return 0;
}

typedef struct {
    const float *x, *u; const int64_t* idx; float* h;
    int64_t N, A, D, lo, hi, bad;
} dot_job;

#define AHEAD 4  /* retrievals ahead whose u rows are prefetched: rows in flight while one is summed */

/* tokens [lo, hi): h[t, a] = u[idx[t, a]] . x_t; an index outside [0, N) is counted in bad, its h is NaN */
static void* dot_run(void* arg) {
    dot_job* a = (dot_job*)arg;
    int64_t D = a->D, end = a->hi * a->A;
    for (int64_t t = a->lo; t < a->hi; t++) {
        const float* x = a->x + t * D;
        for (int64_t p = t * a->A; p < (t + 1) * a->A; p++) {
            if (p + AHEAD < end)
                for (int64_t d = 0; d < D; d += 16) __builtin_prefetch(a->u + a->idx[p + AHEAD] * D + d);
            if ((uint64_t)a->idx[p] >= (uint64_t)a->N) { a->bad++; a->h[p] = NAN; continue; }
            const float* u = a->u + a->idx[p] * D;
            v8f acc[4] = {0};
            int64_t d = 0;
            for (; d + 32 <= D; d += 32)
                for (int j = 0; j < 4; j++) acc[j] += load8(u + d + 8 * j) * load8(x + d + 8 * j);
            v8f r = (acc[0] + acc[1]) + (acc[2] + acc[3]);
            float h = ((r[0] + r[4]) + (r[2] + r[6])) + ((r[1] + r[5]) + (r[3] + r[7]));
            for (; d < D; d++) h += u[d] * x[d];
            a->h[p] = h;
        }
    }
    return 0;
}

/* One job per OpenMP thread, on torch's own workers (native_build says why). Without OpenMP support the
   pragma is ignored: serial. */
static void fan_out(void* (*run)(void*), void* jobs, size_t size, int n) {
    #pragma omp parallel for num_threads(n) schedule(static, 1)
    for (int i = 0; i < n; i++) run((char*)jobs + i * size);
}

/* Returns -1, writing nothing, unless 1 <= K <= 256 and every candidate pair's ranks lie in [0, K). */
int peer_product_topk(const float* s, float* score, int64_t* out, const int64_t* pi, const int64_t* pj,
                      int64_t H, int64_t T, int64_t R, int64_t K, int64_t C, int n) {
    if (K < 1 || K > 256) return -1;
    for (int64_t c = 0; c < C; c++)
        if ((uint64_t)pi[c] >= (uint64_t)K || (uint64_t)pj[c] >= (uint64_t)K) return -1;
    topk_job jobs[64];
    for (int i = 0; i < n; i++)
        jobs[i] = (topk_job){s, score, out, pi, pj, H, T, R, K, C, H * T * i / n, H * T * (i + 1) / n};
    fan_out(topk_run, jobs, sizeof(topk_job), n);
    return 0;
}

/* u has N rows. Returns how many indices were outside [0, N) (their h is NaN). */
int64_t peer_gather_dot(const float* x, const float* u, const int64_t* idx, float* h, int64_t N, int64_t T, int64_t A,
                        int64_t D, int n) {
    dot_job jobs[64];
    for (int i = 0; i < n; i++) jobs[i] = (dot_job){x, u, idx, h, N, A, D, T * i / n, T * (i + 1) / n, 0};
    fan_out(dot_run, jobs, sizeof(dot_job), n);
    int64_t bad = 0;
    for (int i = 0; i < n; i++) bad += jobs[i].bad;
    return bad;
}
