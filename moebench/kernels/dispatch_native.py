"""The element-wise passes around sort_gather's expert GEMMs, in plain C for CPU (no autograd):

    sort_by_expert(expert_A, kept_A, ...)     the kept assignments in expert order (a counting sort)
    swiglu_bf16(h_nI)                         act = silu(h[:, :F]) * h[:, F:]            bfloat16
    swiglu_f32_(h_nI)                         the same, float32, in place
    combine_add(y_TD, out_nD, token_n, w_n)   y[token[i]] += w[i] * out[i]               float32 y; out bf16/fp32
    combine_rows(outs, counts, token_S, w_S)  y[t] = sum over t's sorted rows s of w[s] * row s, float32 sums,
                                              returned in bf16 or fp32 (one pass, no float32 [T, D] buffer)

Why: with bf16 experts on AMX one expert's GEMM pair takes ~1.5 ms at the issue-5 shapes (n=512, D=512,
F=1408, 2 threads), and torch's passes around it cost a large share of that: silu and the product ~400 us
on [512, 1408] (two passes), the combine ~190 us (a mixed-dtype scale that widens out to float32 first,
then index_add_), the final float32 -> bf16 copy ~200 us, and the sort by expert ~0.6 ms per call (ten
small torch ops). Here swiglu is one pass (~200-250 us: float32 inside, AVX-512 where present, rounded
once to bf16), the combine widens, weights and adds in one, the sort is one counting pass. (A C gather
of each expert's rows measured no faster than index_select inside the expert loop, so there is none.)
combine_add gives each thread a block of columns, so equal tokens never race; combine_rows gives each
thread whole tokens (it sorts the rows by token first).
Numerics: swiglu's exp is range reduction plus a degree-5 polynomial (relative error < 3e-6, bf16's
step is 4e-3), silu(-inf) is NaN and exp overflows to inf as in torch; torch's unfused path rounds after
silu and again after the product, this rounds once. The combines sum the same float32 terms in the same
order as index_add_ of w * out (possibly contracted to fused multiply-adds).
The source is compiled once (moebench.kernels.native_build); `available()` says whether it did, and
sort_gather falls back to torch when it did not.
Axis legend: T tokens, D model dim, n rows (one expert's assignments), S sorted kept assignments, F expert
hidden dim, I = 2F.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from moebench.kernels import native_build

SOURCE = r"""
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

/* y[token[i], c] += w[i] * out[i, c]; thread b owns columns [b*D/threads, (b+1)*D/threads), rounded to 16. */
void moe_combine_add(float* y, const void* out, int out_is_bf16, const int64_t* token, const float* w, int64_t n,
                     int64_t D, int threads) {
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
}
"""
DTYPES = (torch.bfloat16, torch.float32)  # what combine_add and combine_rows take
# Below this many elements a pass runs on one thread (waking workers costs more than it saves).
SERIAL_ELEMENTS = 32768


@functools.cache
def _library() -> ctypes.CDLL | None:
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    # 512-bit vectors for the auto-vectorised loops: swiglu is compute-bound (its exp); 20% faster than gcc's
    # default 256-bit here, measured with the scalar code before the AVX-512 intrinsics.
    lib = native_build.load("dispatch", SOURCE, extra_flags=["-mprefer-vector-width=512"], signatures={
        "moe_swiglu_bf16": [ptr, ptr, i64, i64, c_int],
        "moe_swiglu_f32_inplace": [ptr, i64, i64, c_int],
        "moe_sort_by_expert": [ptr, ptr, ptr, ptr, i64, i64, ptr, ptr, ptr],
        "moe_combine_add": [ptr, ptr, c_int, ptr, ptr, i64, i64, c_int],
        "moe_combine_rows": [ptr, c_int, ptr, ptr, i64, c_int, ptr, ptr, i64, i64, i64, c_int],
    })
    if lib is not None:
        lib.moe_sort_by_expert.restype = i64
    return lib


def available() -> bool:
    """True when the C source compiled here (a C compiler is on PATH, or CC names one)."""
    return _library() is not None


def _lib() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError("dispatch_native: the C source did not compile (no C compiler on PATH? set CC)")
    return lib


def _threads(elements: int) -> int:
    if elements < SERIAL_ELEMENTS:
        return 1
    return max(1, min(torch.get_num_threads(), native_build.MAX_THREADS))


def _check(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...], ndim: int) -> None:
    if not native_build.plain_cpu(t) or t.dtype not in dtypes or t.dim() != ndim or not t.is_contiguous():
        raise ValueError(f"dispatch_native: {name} must be a contiguous {ndim}-d CPU tensor (not a subclass) of "
                         f"{' or '.join(str(d) for d in dtypes)}, got {t.dtype} {tuple(t.shape)} on {t.device}"
                         f"{'' if t.is_contiguous() else ' (not contiguous)'}")


def swiglu_bf16(h_nI: torch.Tensor, out_nF: torch.Tensor | None = None) -> torch.Tensor:
    """silu(gate) * up of bfloat16 h = [gate | up] ([n, 2F]), computed in float32, rounded once."""
    _check("h", h_nI, (torch.bfloat16,), 2)
    n, I = h_nI.shape
    if I % 2:
        raise ValueError(f"swiglu_bf16: h has {I} columns; it needs [gate | up], an even number")
    out_nF = h_nI.new_empty(n, I // 2) if out_nF is None else out_nF
    _check("out", out_nF, (torch.bfloat16,), 2)
    if out_nF.shape != (n, I // 2):
        raise ValueError(f"swiglu_bf16: out {tuple(out_nF.shape)} must be [{n}, {I // 2}]")
    if n:
        _lib().moe_swiglu_bf16(h_nI.data_ptr(), out_nF.data_ptr(), n, I // 2, _threads(out_nF.numel()))
    return out_nF


def sort_by_expert(expert_A: torch.Tensor, kept_A: torch.Tensor, token_A: torch.Tensor, weight_A: torch.Tensor,
                   n_experts: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(token_S, weight_S, counts): the kept assignments ordered by expert, stably (as a stable argsort
    of the expert ids), their tokens, their float32 weights, and how many each expert got."""
    expert_A, token_A = (t.to(torch.int64).contiguous() for t in (expert_A, token_A))
    kept_A, weight_A = kept_A.to(torch.bool).contiguous(), weight_A.detach().float().contiguous()
    for name, t in (("expert", expert_A), ("kept", kept_A), ("token", token_A), ("weight", weight_A)):
        _check(name, t, (t.dtype,), 1)
    A = len(expert_A)
    if not len(kept_A) == len(token_A) == len(weight_A) == A:
        raise ValueError(f"sort_by_expert: {A} experts, {len(kept_A)} kept flags, {len(token_A)} tokens and "
                         f"{len(weight_A)} weights disagree")
    token_S, weight_S = torch.empty(A, dtype=torch.int64), torch.empty(A)
    counts_E = torch.empty(n_experts, dtype=torch.int64)
    S = _lib().moe_sort_by_expert(expert_A.data_ptr(), kept_A.data_ptr(), token_A.data_ptr(), weight_A.data_ptr(),
                                  A, n_experts, token_S.data_ptr(), weight_S.data_ptr(), counts_E.data_ptr())
    if S == -1:
        bad = expert_A[kept_A & ((expert_A < 0) | (expert_A >= n_experts))][:5].tolist()
        raise ValueError(f"sort_by_expert: kept assignments name experts {bad} outside [0, {n_experts})")
    if S < 0:
        raise MemoryError("sort_by_expert: no memory for the counts")
    return token_S[:S], weight_S[:S], counts_E.tolist()


def swiglu_f32_(h_nI: torch.Tensor) -> torch.Tensor:
    """In place on float32 h = [gate | up] ([n, 2F], contiguous): gate := silu(gate) * up (float32 math
    with the polynomial exp: relative error ~3e-6 against torch's). Returns the gate half, a strided view."""
    _check("h", h_nI, (torch.float32,), 2)
    n, I = h_nI.shape
    if I % 2:
        raise ValueError(f"swiglu_f32_: h has {I} columns; it needs [gate | up], an even number")
    if n:
        _lib().moe_swiglu_f32_inplace(h_nI.data_ptr(), n, I // 2, _threads(n * I // 2))
    return h_nI[:, :I // 2]


def combine_add(y_TD: torch.Tensor, out_nD: torch.Tensor, token_n: torch.Tensor,
                weight_n: torch.Tensor) -> torch.Tensor:
    """y[token[i]] += weight[i] * out[i] in float32 (out bfloat16 or float32), in place; returns y.
    Tokens are trusted to lie in [0, T); a token may repeat."""
    _check("y", y_TD, (torch.float32,), 2)
    _check("out", out_nD, (torch.bfloat16, torch.float32), 2)
    _check("token", token_n, (torch.int64,), 1)
    _check("weight", weight_n, (torch.float32,), 1)
    n, D = out_nD.shape
    if y_TD.shape[1] != D or len(token_n) != n or len(weight_n) != n:
        raise ValueError(f"combine_add: y {tuple(y_TD.shape)}, out {tuple(out_nD.shape)}, token "
                         f"{tuple(token_n.shape)}, weight {tuple(weight_n.shape)} disagree")
    if n:
        threads = min(_threads(out_nD.numel()), max(1, D // 16))
        _lib().moe_combine_add(y_TD.data_ptr(), out_nD.data_ptr(), int(out_nD.dtype == torch.bfloat16),
                               token_n.data_ptr(), weight_n.data_ptr(), n, D, threads)
    return y_TD


def combine_rows(outs: list[torch.Tensor], counts: list[int], token_S: torch.Tensor, weight_S: torch.Tensor,
                 n_tokens: int, d_model: int, dtype: torch.dtype) -> torch.Tensor:
    """y[t] = sum of weight[s] * row s over the sorted assignments s of token t, in float32, in sorted
    order; returned in dtype (bfloat16 or float32). Row s is row s - start_e of outs[e], the output of
    expert e, which holds sorted assignments [start_e, start_e + counts[e]). Tokens without rows get 0."""
    if len(outs) != len(counts):
        raise ValueError(f"combine_rows: {len(outs)} outputs for {len(counts)} counts")
    D = d_model
    y_TD = torch.empty(n_tokens, D, dtype=dtype)
    if not outs or not D:
        return y_TD.zero_()
    for out_nD, n in zip(outs, counts, strict=True):
        _check("out", out_nD, (outs[0].dtype,), 2)
        if out_nD.shape != (n, D):
            raise ValueError(f"combine_rows: an expert output is {tuple(out_nD.shape)}, expected [{n}, {D}]")
    _check("weight", weight_S, (torch.float32,), 1)
    if dtype not in DTYPES:
        raise ValueError(f"combine_rows: dtype={dtype} is invalid: allowed values are {DTYPES}")
    counts_E = torch.tensor(counts, dtype=torch.int64)
    base_E = torch.tensor([o.data_ptr() for o in outs], dtype=torch.int64)
    S = sum(counts)
    token_S = token_S[:S].contiguous()
    _check("token", token_S, (torch.int64,), 1)
    if len(token_S) < S or len(weight_S) < S:
        raise ValueError(f"combine_rows: {S} rows but {len(token_S)} tokens and {len(weight_S)} weights")
    if _lib().moe_combine_rows(y_TD.data_ptr(), int(dtype == torch.bfloat16), base_E.data_ptr(), counts_E.data_ptr(),
                               len(outs), int(outs[0].dtype == torch.bfloat16), token_S.data_ptr(),
                               weight_S.data_ptr(), S, n_tokens, D, _threads(S * D)):
        raise MemoryError(f"combine_rows: no memory for the index of {S} rows and {n_tokens} tokens")
    return y_TD


__all__ = ["DTYPES", "available", "combine_add", "combine_rows", "sort_by_expert", "swiglu_bf16", "swiglu_f32_"]
