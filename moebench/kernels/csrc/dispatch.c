#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }

static inline uint16_t f32_to_bf16(float f) {  /* round to nearest even; NaN stays a quiet NaN */
    uint32_t u; memcpy(&u, &f, 4);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (f != f) ? (uint16_t)((u >> 16) | 0x40u) : (uint16_t)rounded;
}

/* exp(x) for float32, accurate enough for a bfloat16 result: x = k ln2 + r, |r| <= ln2/2, exp(r) by its
   degree-5 Taylor polynomial (relative error < 3e-6, against bf16's rounding step of 4e-3), 2^k built in
   the exponent bits (as 2 * 2^(k-1), so k = 128 fits). Above EXP_MAX the result is +inf, as expf's; x is
   raised to -87 (results below 1.6e-38 become that, which only silu's denominator 1 + exp(x) sees). A NaN
   x gives some finite value: callers keep the NaN through their other operand. */
#define EXP_MAX 88.72f
static inline float exp_f32(float x) {
    if (x > EXP_MAX) return __builtin_inff();
    x = x < -87.0f ? -87.0f : x;
    float k = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - k * 0.693145751953125f - k * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120)))));
    int32_t e = ((int32_t)k + 126) << 23;
    float s; memcpy(&s, &e, 4);
    return p * s * 2.0f;
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
/* 16 lanes of sigmoid(g) = 1 / (1 + exp(-g)): exp(-g) = 2^t, t = -g log2(e) clamped to [-150, 150], as
   2^k * p(t - k) with p the degree-5 Taylor polynomial of 2^r (relative error < 3e-6) and the scaling by
   2^k by vscalefps (overflow to inf, underflow to 0 exactly); 1/d by vrcp14ps and one Newton step (error
   ~2^-23; a division costs several times more on AVX-512), 0 where d is inf. */
static inline __m512 sigmoid16(__m512 g) {
    __m512 t = _mm512_mul_ps(g, _mm512_set1_ps(-1.44269504088896341f));
    t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-150.0f)), _mm512_set1_ps(150.0f));
    __m512 k = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_mul_ps(_mm512_sub_ps(t, k), _mm512_set1_ps(0.693147180559945309f));
    __m512 p = _mm512_set1_ps(1.0f / 120);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_scalef_ps(p, k));
    __m512 q = _mm512_rcp14_ps(d);
    q = _mm512_fmadd_ps(q, _mm512_fnmadd_ps(d, q, _mm512_set1_ps(1.0f)), q);
    __mmask16 inf = _mm512_cmp_ps_mask(d, _mm512_set1_ps(__builtin_inff()), _CMP_EQ_OQ);
    return _mm512_mask_mov_ps(q, inf, _mm512_setzero_ps());
}
static inline __m512 load_bf16x16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
/* columns [0, F rounded down to 16) with AVX-512; vcvtneps2bf16 rounds to nearest even (denormals to 0) */
static int64_t swiglu_row_vector(const uint16_t* gate, const uint16_t* up, uint16_t* a, int64_t F) {
    int64_t j = 0;
    for (; j + 16 <= F; j += 16) {
        __m512 g = load_bf16x16(gate + j);
        __m256bh out = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_mul_ps(g, sigmoid16(g)), load_bf16x16(up + j)));
        _mm256_storeu_si256((__m256i*)(a + j), (__m256i)out);
    }
    return j;
}
static int64_t swiglu_row_vector_f32(float* gate, const float* up, int64_t F) {
    int64_t j = 0;
    for (; j + 16 <= F; j += 16) {
        __m512 g = _mm512_loadu_ps(gate + j);
        _mm512_storeu_ps(gate + j, _mm512_mul_ps(_mm512_mul_ps(g, sigmoid16(g)), _mm512_loadu_ps(up + j)));
    }
    return j;
}
#else
static int64_t swiglu_row_vector(const uint16_t* gate, const uint16_t* up, uint16_t* a, int64_t F) {
    (void)gate; (void)up; (void)a; (void)F;
    return 0;
}
static int64_t swiglu_row_vector_f32(float* gate, const float* up, int64_t F) {
    (void)gate; (void)up; (void)F;
    return 0;
}
#endif

void moe_swiglu_bf16(const uint16_t* h, uint16_t* act, int64_t n, int64_t F, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const uint16_t* gate = h + i * 2 * F;
        const uint16_t* up = gate + F;
        uint16_t* a = act + i * F;
        for (int64_t j = swiglu_row_vector(gate, up, a, F); j < F; j++) {
            float g = bf16_to_f32(gate[j]);
            a[j] = f32_to_bf16(g / (1.0f + exp_f32(-g)) * bf16_to_f32(up[j]));
        }
    }
}

/* The kept assignments in expert order, stable (a counting sort; = a stable argsort of the expert ids with
   dropped ones last): their tokens and weights, and the count per expert. Returns S, or -1 if a kept
   assignment's expert is outside [0, E), or -2 if out of memory. */
int64_t moe_sort_by_expert(const int64_t* expert, const uint8_t* kept, const int64_t* token, const float* weight,
                           int64_t A, int64_t E, int64_t* token_out, float* weight_out, int64_t* count) {
    int64_t* fill = malloc((E + 1) * sizeof(int64_t));
    if (!fill) return -2;
    for (int64_t e = 0; e < E; e++) count[e] = 0;
    for (int64_t a = 0; a < A; a++) {
        if (!kept[a]) continue;
        if ((uint64_t)expert[a] >= (uint64_t)E) { free(fill); return -1; }
        count[expert[a]]++;
    }
    int64_t S = 0;
    for (int64_t e = 0; e < E; e++) { fill[e] = S; S += count[e]; }
    for (int64_t a = 0; a < A; a++) {
        if (!kept[a]) continue;
        int64_t s = fill[expert[a]]++;
        token_out[s] = token[a];
        weight_out[s] = weight[a];
    }
    free(fill);
    return S;
}

/* float32 h = [gate | up] rows of 2F: gate := silu(gate) * up, in place (the next GEMM reads the strided half) */
void moe_swiglu_f32_inplace(float* h, int64_t n, int64_t F, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float* gate = h + i * 2 * F;
        const float* up = gate + F;
        for (int64_t j = swiglu_row_vector_f32(gate, up, F); j < F; j++)
            gate[j] = gate[j] / (1.0f + exp_f32(-gate[j])) * up[j];
    }
}

/* y[t] = sum over the sorted rows s of token t (in s order) of w[s] * row s, in float32, stored in y's dtype
   (bf16 when y_is_bf16, else float32); tokens without rows get 0. Row s is row s - start_e of expert e's
   output at address base[e], the experts holding consecutive runs of count[e] sorted rows. The index
   (rows by token, a stable counting sort) is built serially first, O(S + T); then threads take whole
   tokens, so no two write the same row. Tokens outside [0, T) are skipped. Returns -1 if out of memory. */
int moe_combine_rows(void* y, int y_is_bf16, const int64_t* base, const int64_t* count, int64_t E, int out_is_bf16,
                     const int64_t* token, const float* w, int64_t S, int64_t T, int64_t D, int threads) {
    int64_t* start = calloc(T + 1, sizeof(int64_t));
    int64_t* fill = malloc(T * sizeof(int64_t) + 1);
    int64_t* by_token = malloc(S * sizeof(int64_t) + 1);
    const char** row = malloc(S * sizeof(char*) + 1);
    if (!start || !fill || !by_token || !row) { free(start); free(fill); free(by_token); free(row); return -1; }
    size_t row_bytes = (size_t)D * (out_is_bf16 ? 2 : 4);
    for (int64_t e = 0, s = 0; e < E; e++)
        for (int64_t i = 0; i < count[e] && s < S; i++, s++) row[s] = (const char*)base[e] + i * row_bytes;
    for (int64_t s = 0; s < S; s++)
        if ((uint64_t)token[s] < (uint64_t)T) start[token[s] + 1]++;
    for (int64_t t = 0; t < T; t++) { start[t + 1] += start[t]; fill[t] = start[t]; }
    for (int64_t s = 0; s < S; s++)
        if ((uint64_t)token[s] < (uint64_t)T) by_token[fill[token[s]]++] = s;
    #pragma omp parallel num_threads(threads)
    {
        float acc[512];
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            for (int64_t c0 = 0; c0 < D; c0 += 512) {
                int64_t c1 = c0 + 512 < D ? c0 + 512 : D;
                for (int64_t c = c0; c < c1; c++) acc[c - c0] = 0.0f;
                for (int64_t j = start[t]; j < start[t + 1]; j++) {
                    int64_t s = by_token[j];
                    float ws = w[s];
                    if (out_is_bf16) {
                        const uint16_t* o = (const uint16_t*)row[s];
                        for (int64_t c = c0; c < c1; c++) acc[c - c0] += ws * bf16_to_f32(o[c]);
                    } else {
                        const float* o = (const float*)row[s];
                        for (int64_t c = c0; c < c1; c++) acc[c - c0] += ws * o[c];
                    }
                }
                if (y_is_bf16) {
                    uint16_t* yr = (uint16_t*)y + t * D;
                    for (int64_t c = c0; c < c1; c++) yr[c] = f32_to_bf16(acc[c - c0]);
                } else {
                    float* yr = (float*)y + t * D;
                    for (int64_t c = c0; c < c1; c++) yr[c] = acc[c - c0];
                }
            }
        }
    }
    free(start); free(fill); free(by_token); free(row);
    return 0;
}

/* y[token[i], c] += w[i] * out[i, c] for y of T rows; thread b owns columns [b*D/threads, (b+1)*D/threads),
   rounded to 16. Returns -1, writing nothing, if a token is outside [0, T). */
int moe_combine_add(float* y, const void* out, int out_is_bf16, const int64_t* token, const float* w, int64_t n,
                    int64_t T, int64_t D, int threads) {
    for (int64_t i = 0; i < n; i++)
        if ((uint64_t)token[i] >= (uint64_t)T) return -1;
    #pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int b = 0; b < threads; b++) {
        int64_t c0 = (D * b / threads) & ~15, c1 = b == threads - 1 ? D : (D * (b + 1) / threads) & ~15;
        for (int64_t i = 0; i < n; i++) {
            float* yr = y + token[i] * D;
            float wi = w[i];
            if (out_is_bf16) {
                const uint16_t* o = (const uint16_t*)out + i * D;
                for (int64_t c = c0; c < c1; c++) yr[c] += wi * bf16_to_f32(o[c]);
            } else {
                const float* o = (const float*)out + i * D;
                for (int64_t c = c0; c < c1; c++) yr[c] += wi * o[c];
            }
        }
    }
    return 0;
}
