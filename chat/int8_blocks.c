/* Int8 (or int4) matrix products with a scale per block of 32 weights and per block of 32 activations
 * (llama.cpp's q8_0 / q4_0 granularity), for chat/int8_blocks.py. AVX-512 VNNI; built at first use.
 *
 * Weights, packed by int8_blocks.pack(): output rows in groups of 16; for each group and each 4
 * columns k..k+3 one 64-byte vector holding the 16 rows' 4 bytes (row r at bytes 4r..4r+3), stored
 * as w + 128 (unsigned: VNNI multiplies unsigned by signed bytes); per group and block of 32
 * columns, the 16 rows' scales as fp16. So a group's bytes are read once, in order, for all rows
 * of activations, and one dot-product instruction adds 4 columns of 16 outputs. Int4 weights (w + 8,
 * 0..15) hold two such vectors in 64 bytes: columns k..k+3 in the low nibbles, k+4..k+7 in the high.
 *
 * Activations are quantised here per row and block of 32 (`round_block`), so each row's
 * numbers are the same whatever other rows share the call (a chat alone or batched). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define BLOCK 32
#define TILE_ROWS 8    /* at most this many rows of activations and groups of 16 outputs computed together */
#define TILE_GROUPS 3
#define PREFETCH 4096  /* bytes ahead in each group's weights asked of the cache while rows compute (tile_product) */
#define ACT_STEPS 4  /* activations: 9 scales tried per block (weights: as many as int8_blocks.pack asks) */
#define ACT_STEP 0.008f

/* Rounds a block of 32 values to `top`-level signed integers (127: int8 in -127..127; 8: int4 in -8..7, the
 * largest magnitude on -8 as q4_0 does) with the scale, among the maximum's * (1 + i * step) for |i| <= steps,
 * that rounds them closest (a scale a little off the maximum often fits the other 31 values better: 12-20 %
 * less squared error for int8); half: the scale is stored as fp16, so that one is tried. */
static float round_block(const float *x, int8_t *q, int steps, float step, int half, int top) {
    __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
    float amax = 0.0f, peak = 0.0f;  /* the largest magnitude, and that value with its sign */
    for (int j = 0; j < BLOCK; j++)
        if (fabsf(x[j]) > amax) amax = fabsf(x[j]), peak = x[j];
    float base = top == 8 ? peak / -8.0f : amax / 127.0f;
    const __m512 lo = _mm512_set1_ps(top == 8 ? -8.0f : -127.0f), hi = _mm512_set1_ps(top == 8 ? 7.0f : 127.0f);
    float best = INFINITY, best_scale = 0.0f;
    for (int i = -steps; i <= steps && amax > 0.0f; i++) {
        float scale = base * (1.0f + (float)i * step);
        if (half) scale = _cvtsh_ss(_cvtss_sh(scale, _MM_FROUND_TO_NEAREST_INT));
        if (!(fabsf(scale) > 0.0f) || !isfinite(scale)) continue;
        __m512 s = _mm512_set1_ps(scale), inv = _mm512_set1_ps(1.0f / scale);
        __m512 r0 = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_roundscale_ps(_mm512_mul_ps(x0, inv), _MM_FROUND_TO_NEAREST_INT)));
        __m512 r1 = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_roundscale_ps(_mm512_mul_ps(x1, inv), _MM_FROUND_TO_NEAREST_INT)));
        __m512 e0 = _mm512_fmsub_ps(r0, s, x0), e1 = _mm512_fmsub_ps(r1, s, x1);
        float err = _mm512_reduce_add_ps(_mm512_fmadd_ps(e0, e0, _mm512_mul_ps(e1, e1)));
        if (err < best) {
            best = err;
            best_scale = scale;
        }
    }
    __m512 inv = _mm512_set1_ps(best_scale != 0.0f ? 1.0f / best_scale : 0.0f);
    __m512i i0 = _mm512_cvtps_epi32(_mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_roundscale_ps(_mm512_mul_ps(x0, inv), _MM_FROUND_TO_NEAREST_INT))));
    __m512i i1 = _mm512_cvtps_epi32(_mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_roundscale_ps(_mm512_mul_ps(x1, inv), _MM_FROUND_TO_NEAREST_INT))));
    _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(i0));
    _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(i1));
    return best_scale;
}

/* Rows of k values (k a multiple of 32) to integer codes (`top` as in round_block) and a scale per block of
 * 32 (fp16 bits where half). */
void int8_blocks_quantize(const float *x, int64_t rows, int64_t k, int steps, float step, int half, int top,
                          int8_t *q, void *scales) {
    for (int64_t i = 0; i < rows * (k / BLOCK); i++) {
        float scale = round_block(x + i * BLOCK, q + i * BLOCK, steps, step, half, top);
        if (half) ((uint16_t *)scales)[i] = _cvtss_sh(scale, _MM_FROUND_TO_NEAREST_INT);
        else ((float *)scales)[i] = scale;
    }
}

/* Several rows' blocks are shared out among the threads: 8 rows of 2048 take ~40 us on one. */
static void quantize_rows(const float *x, int64_t m, int64_t k, int offset, int8_t *q, float *d, int32_t *sums,
                          int threads) {
    int64_t blocks = k / BLOCK;
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && m * blocks >= 256)
    for (int64_t i = 0; i < m * blocks; i++) {
        d[i] = round_block(x + i * BLOCK, q + i * BLOCK, ACT_STEPS, ACT_STEP, 0, 127);
        int32_t sum = 0;
        for (int j = 0; j < BLOCK; j++) sum += q[i * BLOCK + j];
        sums[i] = -offset * sum;  /* the weights are stored + offset: this takes off what that adds to a dot */
    }
}

/* `tile` rows of activations against `ng` groups of 16 output rows (both constants where inlined). Per block:
 * the exact int32 dot products (one weight vector serves every row, one activation broadcast every group),
 * then acc += dot * weight scale * activation scale, in block order: a row's numbers do not depend on the tiling.
 * With several rows the products take as long as reading the weights, and the core's own prefetching no longer
 * keeps enough reads in flight: asking for the weights PREFETCH bytes ahead overlaps the two (8 rows: 1.96x one
 * row's time -> 1.5x; one row is bound by reading alone and asks nothing). */
static inline __attribute__((always_inline)) void tile_product(
        const uint8_t *w, const uint16_t *wd, const int8_t *q, const float *d, const int32_t *sums,
        int64_t k, int bits, int tile, int ng, float *out, int64_t n, int64_t n_valid) {
    int64_t blocks = k / BLOCK, stride = 16 * k * bits / 8;  /* a group's weight bytes */
    __m512 acc[TILE_ROWS][TILE_GROUPS];
    for (int r = 0; r < tile; r++)
        for (int g = 0; g < ng; g++) acc[r][g] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        __m512i dot[TILE_ROWS][TILE_GROUPS];
        for (int r = 0; r < tile; r++)
            for (int g = 0; g < ng; g++) dot[r][g] = _mm512_set1_epi32(sums[r * blocks + b]);
        const int32_t *a = (const int32_t *)(q + b * BLOCK);  /* row r's 4 activations for columns 4j.. at a[r*k/4 + j] */
        if (bits == 8) {
            for (int j = 0; j < BLOCK / 4; j++) {  /* 4 columns of the 16 outputs of each group, for every row */
                __m512i wj[TILE_GROUPS];
                for (int g = 0; g < ng; g++) wj[g] = _mm512_loadu_si512(w + g * stride + (b * BLOCK / 4 + j) * 64);
                for (int g = 0; g < ng && tile > 1; g++)
                    _mm_prefetch((const char *)(w + g * stride + (b * BLOCK / 4 + j) * 64 + PREFETCH), _MM_HINT_T0);
                for (int r = 0; r < tile; r++) {
                    __m512i ar = _mm512_set1_epi32(a[r * k / 4 + j]);
                    for (int g = 0; g < ng; g++) dot[r][g] = _mm512_dpbusd_epi32(dot[r][g], wj[g], ar);
                }
            }
        } else {  /* int4: one 64-byte load holds 8 columns of the 16 outputs, as low and high nibbles */
            const __m512i low = _mm512_set1_epi8(0x0F);
            for (int j = 0; j < BLOCK / 8; j++) {
                __m512i wj[TILE_GROUPS];
                for (int g = 0; g < ng; g++)
                    wj[g] = _mm512_and_si512(_mm512_loadu_si512(w + g * stride + (b * BLOCK / 8 + j) * 64), low);
                for (int g = 0; g < ng && tile > 1; g++)
                    _mm_prefetch((const char *)(w + g * stride + (b * BLOCK / 8 + j) * 64 + PREFETCH), _MM_HINT_T0);
                for (int r = 0; r < tile; r++) {
                    __m512i ar = _mm512_set1_epi32(a[r * k / 4 + 2 * j]);
                    for (int g = 0; g < ng; g++) dot[r][g] = _mm512_dpbusd_epi32(dot[r][g], wj[g], ar);
                }
                for (int g = 0; g < ng; g++)
                    wj[g] = _mm512_and_si512(_mm512_srli_epi16(_mm512_loadu_si512(w + g * stride + (b * BLOCK / 8 + j) * 64), 4), low);
                for (int r = 0; r < tile; r++) {
                    __m512i ar = _mm512_set1_epi32(a[r * k / 4 + 2 * j + 1]);
                    for (int g = 0; g < ng; g++) dot[r][g] = _mm512_dpbusd_epi32(dot[r][g], wj[g], ar);
                }
            }
        }
        for (int g = 0; g < ng; g++) {
            __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wd + g * 16 * blocks + b * 16)));
            for (int r = 0; r < tile; r++)
                acc[r][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r][g]),
                                            _mm512_mul_ps(scale, _mm512_set1_ps(d[r * blocks + b])), acc[r][g]);
        }
    }
    for (int g = 0; g < ng; g++) {
        int64_t left = n_valid - g * 16;
        __mmask16 valid = (__mmask16)(left >= 16 ? 0xFFFF : (1u << left) - 1);
        for (int r = 0; r < tile; r++) _mm512_mask_storeu_ps(out + r * n + g * 16, valid, acc[r][g]);
    }
}

/* `rows` (1..8) rows against `NG` groups, both constants in each case: the accumulators stay in registers. */
#define ROWS_CASE(T, NG) \
    case T: \
        if (bits == 8) tile_product(w, wd, q, d, sums, k, 8, T, NG, out, n, n_valid); \
        else tile_product(w, wd, q, d, sums, k, 4, T, NG, out, n, n_valid); \
        break;

#define TILE_ARGS const uint8_t *w, const uint16_t *wd, const int8_t *q, const float *d, const int32_t *sums, \
                  int64_t k, int bits, int rows, float *out, int64_t n, int64_t n_valid

static void tile_groups3(TILE_ARGS) {
    switch (rows) { ROWS_CASE(1, 3) ROWS_CASE(2, 3) ROWS_CASE(3, 3) ROWS_CASE(4, 3) }
}

static void tile_groups2(TILE_ARGS) {
    switch (rows) {
        ROWS_CASE(1, 2) ROWS_CASE(2, 2) ROWS_CASE(3, 2) ROWS_CASE(4, 2)
        ROWS_CASE(5, 2) ROWS_CASE(6, 2) ROWS_CASE(7, 2) ROWS_CASE(8, 2)
    }
}

static void tile_groups1(TILE_ARGS) {
    switch (rows) {
        ROWS_CASE(1, 1) ROWS_CASE(2, 1) ROWS_CASE(3, 1) ROWS_CASE(4, 1)
        ROWS_CASE(5, 1) ROWS_CASE(6, 1) ROWS_CASE(7, 1) ROWS_CASE(8, 1)
    }
}

/* out[m, n] = x[m, k] @ W.T for the packed W (n outputs); x is float32, row-major. Returns 0, or -1 when out of memory. */
int int8_blocks_linear(const float *x, int64_t m, int64_t k, const uint8_t *w, const uint16_t *wd, int64_t n,
                       int bits, float *out, int threads) {
    int64_t blocks = k / BLOCK, groups = (n + 15) / 16;
    int8_t *q = malloc(m * k);
    float *d = malloc(m * blocks * sizeof(float));
    int32_t *sums = malloc(m * blocks * sizeof(int32_t));
    if (!q || !d || !sums) {
        free(q); free(d); free(sums);
        return -1;
    }
    quantize_rows(x, m, k, bits == 8 ? 128 : 8, q, d, sums, threads);
    int64_t stride = 16 * k * bits / 8;  /* a group's weight bytes */
    /* Tiles of up to 4 rows x 3 groups (the fewest broadcasts per product: prefills), or where a decode step
     * has 5-15 rows (concurrent chats), 8 rows x 2 groups: each weight is read from memory once for all of them. */
    int tile_rows = m > 4 && m < 16 ? 8 : 4, tile_groups = tile_rows == 8 ? 2 : 3;
    int64_t tiles = (groups + tile_groups - 1) / tile_groups;
    #pragma omp parallel for num_threads(threads) schedule(dynamic, 2) if (threads > 1)
    for (int64_t t = 0; t < tiles; t++) {
        int64_t g0 = t * tile_groups, ng = groups - g0 < tile_groups ? groups - g0 : tile_groups;
        for (int64_t r0 = 0; r0 < m; r0 += tile_rows) {
            int rows = m - r0 < tile_rows ? (int)(m - r0) : tile_rows;
            const int8_t *qr = q + r0 * k;
            const float *dr = d + r0 * blocks;
            const int32_t *sr = sums + r0 * blocks;
            if (ng == tile_groups && tile_groups == 3)
                tile_groups3(w + g0 * stride, wd + g0 * 16 * blocks, qr, dr, sr, k, bits, rows, out + r0 * n + g0 * 16, n, n - g0 * 16);
            else if (ng == tile_groups)
                tile_groups2(w + g0 * stride, wd + g0 * 16 * blocks, qr, dr, sr, k, bits, rows, out + r0 * n + g0 * 16, n, n - g0 * 16);
            else
                for (int64_t g = g0; g < g0 + ng; g++)  /* the last groups, one at a time */
                    tile_groups1(w + g * stride, wd + g * 16 * blocks, qr, dr, sr, k, bits, rows, out + r0 * n + g * 16, n, n - g * 16);
        }
    }
    free(q); free(d); free(sums);
    return 0;
}
