/* Decode attention (one query token per cache row) over an fp32 KV cache on a CPU, for chat/attention_cpu.py.
 * AVX-512 F; built at first use (chat/clib.py).
 *
 * A decode step reads each row's whole cache for one token, so it is a stream of bytes: the work per
 * (row, kv head) is 2 * group multiply-adds per key value. torch's SDPA walked it at 6-10 GB/s
 * (benchmarks/decode_attention_cpu.py); here one thread takes one (row, kv head) and all `group` query
 * heads that share it together, so each key and value row is read from memory once, in order (the
 * cache layout keeps a (row, kv head)'s keys contiguous), the values' lines asked for while the keys
 * are read.
 *
 * The softmax is the exact one SDPA computes: scores, their maximum, exp(score - max), their sum; the
 * values weighted by those in fp32. Row i attends to keys 0..positions[i] (the engine's mask); the
 * keys past it are not read at all. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define PREFETCH 8  /* key rows ahead (4 KB at 128 wide) */
#define MAX_GROUP 8  /* query heads per kv head held in registers; more go through a group at a time */

/* exp(x) for x <= 0 (scores less their maximum), Cephes' expf: x = n ln2 + r, |r| <= ln2/2, a degree-6
 * polynomial in r (about 1 ulp), times 2^n by scalef (which gives 0 below the smallest float). */
static inline __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));  /* exp is 0 in fp32 from here: keeps -inf out of r */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  /* ln2 in two parts: r stays exact */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* One (row, kv head): `group` queries (q + g * q_query, `dim` floats each, dim a multiple of 16) over
 * keys and values 0..n-1 (k + j * k_key, v + j * v_key), into out (group rows of dim). `scores` holds
 * group * n floats. Inlined with constant group and dim where those are common, so the loops unroll and
 * the query and output vectors stay in registers. */
static inline __attribute__((always_inline)) void attend(
        const float *q, int64_t q_query, const float *k, int64_t k_key, const float *v, int64_t v_key, int64_t n,
        const int group, const int dim, float scale, float *scores, float *out) {
    const int chunks = dim / 16;
    float top[MAX_GROUP], total[MAX_GROUP];
    for (int g = 0; g < group; g++) top[g] = -INFINITY;
    /* scores: each key row once, dotted with every query of the group while it is in L1 */
    for (int64_t j = 0; j < n; j++) {
        const float *kj = k + j * k_key;
        /* the memory's latency, not its bandwidth, bounds one thread's stream of short blocks: ask for the
         * keys PREFETCH rows ahead and for this row's values now (in L2 by the time the values' pass comes) */
        for (int c = 0; c < dim; c += 16) {  /* a 64-byte line at a time */
            if (j + PREFETCH < n) _mm_prefetch((const char *)(kj + PREFETCH * k_key + c), _MM_HINT_T0);
            _mm_prefetch((const char *)(v + j * v_key + c), _MM_HINT_T1);
        }
        for (int g = 0; g < group; g++) {
            const float *qg = q + g * q_query;
            __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qg), _mm512_loadu_ps(kj));
            __m512 b = _mm512_setzero_ps();  /* two chains: half the latency of one */
            for (int c = 1; c < chunks; c++) {
                if (c & 1) b = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * c), _mm512_loadu_ps(kj + 16 * c), b);
                else a = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * c), _mm512_loadu_ps(kj + 16 * c), a);
            }
            float s = _mm512_reduce_add_ps(_mm512_add_ps(a, b)) * scale;
            scores[g * n + j] = s;
            if (s > top[g]) top[g] = s;
        }
    }
    /* the weights exp(score - max) in place, and their sum */
    for (int g = 0; g < group; g++) {
        float *sg = scores + g * n;
        __m512 m = _mm512_set1_ps(top[g]), sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < n; j += 16) {
            __mmask16 live = n - j >= 16 ? 0xFFFF : (__mmask16)((1u << (n - j)) - 1);
            __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, sg + j), m));
            e = _mm512_maskz_mov_ps(live, e);
            _mm512_mask_storeu_ps(sg + j, live, e);
            sum = _mm512_add_ps(sum, e);
        }
        total[g] = _mm512_reduce_add_ps(sum);
    }
    /* the values: each value row once, added to every query's output with its weight */
    for (int c0 = 0; c0 < chunks; c0 += 8) {  /* 8 vectors of a row at a time: 128 wide in one pass */
        const int width = chunks - c0 < 8 ? chunks - c0 : 8;
        __m512 acc[MAX_GROUP][8];
        for (int g = 0; g < group; g++)
            for (int c = 0; c < width; c++) acc[g][c] = _mm512_setzero_ps();
        for (int64_t j = 0; j < n; j++) {
            const float *vj = v + j * v_key + 16 * c0;
            for (int c = 0; c < width; c++) {
                __m512 x = _mm512_loadu_ps(vj + 16 * c);
                for (int g = 0; g < group; g++)
                    acc[g][c] = _mm512_fmadd_ps(_mm512_set1_ps(scores[g * n + j]), x, acc[g][c]);
            }
        }
        for (int g = 0; g < group; g++) {
            __m512 inv = _mm512_set1_ps(1.0f / total[g]);
            for (int c = 0; c < width; c++)
                _mm512_storeu_ps(out + g * dim + 16 * (c0 + c), _mm512_mul_ps(acc[g][c], inv));
        }
    }
}

static void attend_any(const float *q, int64_t q_query, const float *k, int64_t k_key, const float *v, int64_t v_key,
                       int64_t n, int group, int dim, float scale, float *scores, float *out) {
#define SHAPE(G, D) if (group == G && dim == D) { attend(q, q_query, k, k_key, v, v_key, n, G, D, scale, scores, out); return; }
    SHAPE(1, 64) SHAPE(2, 64) SHAPE(4, 64) SHAPE(1, 128) SHAPE(2, 128) SHAPE(4, 128)
#undef SHAPE
    for (int g0 = 0; g0 < group; g0 += MAX_GROUP) {  /* other shapes: general loops, MAX_GROUP queries a pass */
        int part = group - g0 < MAX_GROUP ? group - g0 : MAX_GROUP;
        attend(q + g0 * q_query, q_query, k, k_key, v, v_key, n, part, dim, scale, scores, out + g0 * dim);
    }
}

/* the keys row i attends to: 0..positions[i], within the view's length */
static inline int64_t keys(int64_t position, int64_t length) { return position + 1 < length ? position + 1 : length; }

/* out [rows, heads, group, dim] (contiguous) = softmax(q k^T * scale) v for each (row, kv head), row i
 * over keys 0..min(positions[i], length - 1). q, k, v: strides in floats (the last dimension contiguous;
 * k and v may be views of a longer cache). dim: a multiple of 16. Returns -1 where there is no memory
 * for the scores. A row with positions[i] < 0 attends to nothing: NaN, as SDPA gives for a row masked whole. */
int attention_decode_f32(const float *q, int64_t q_row, int64_t q_head, int64_t q_query,
                         const float *k, int64_t k_row, int64_t k_head, int64_t k_key,
                         const float *v, int64_t v_row, int64_t v_head, int64_t v_key,
                         const int64_t *positions, int64_t rows, int64_t heads, int64_t group, int64_t dim,
                         int64_t length, float scale, float *out, int threads) {
    int failed = 0;
    #pragma omp parallel num_threads(threads) if (threads > 1 && rows * heads > 1)
    {
        float *scores = malloc(sizeof(float) * ((size_t)(group < MAX_GROUP ? group : MAX_GROUP) * (size_t)length + 1));
        if (!scores) {
            #pragma omp atomic write
            failed = 1;
        }
        /* pairs handed out one at a time: rows differ in length, and a thread the OS has put aside (a
         * busy machine) leaves its share to the others instead of holding up the step */
        #pragma omp for schedule(dynamic) nowait
        for (int64_t pair = 0; pair < rows * heads; pair++) {
            int64_t i = pair / heads, h = pair % heads;
            int64_t n = keys(positions[i], length);
            float *o = out + pair * group * dim;
            if (n <= 0) {
                for (int64_t x = 0; x < group * dim; x++) o[x] = NAN;
                continue;
            }
            if (!scores) continue;
            attend_any(q + i * q_row + h * q_head, q_query, k + i * k_row + h * k_head, k_key,
                       v + i * v_row + h * v_head, v_key, n, (int)group, (int)dim, scale, scores, o);
        }
        free(scores);
    }
    return failed ? -1 : 0;
}
