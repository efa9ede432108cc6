/*
 * MPI_Allreduce sweep for bench/allreduce-vs-mpi.sh: the same sizes, data pattern, iteration
 * policy, timing (mean per call, slowest rank) and in-place check as `skein-allreduce bench`,
 * printed in the same columns so the script can compare rows directly.
 *
 * Build: mpicc -O2 -o allreduce-mpi allreduce-mpi.c
 * Usage: mpirun -np N ./allreduce-mpi [-b MIN_BYTES] [-e MAX_BYTES]
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t parse_size(const char *s) {
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end == 'K' || *end == 'k') v <<= 10;
    else if (*end == 'M' || *end == 'm') v <<= 20;
    else if (*end == 'G' || *end == 'g') v <<= 30;
    return (size_t)v;
}

/* The pattern of skein_collectives::reference::pattern for sum. */
static void fill(float *buf, size_t count, int rank) {
    for (size_t i = 0; i < count; i++)
        buf[i] = (float)(((size_t)rank * 31 + (i % 13) * 7) % 13);
}

static size_t clamp(size_t v, size_t lo, size_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    size_t minb = 8, maxb = (size_t)256 << 20;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-b")) minb = parse_size(argv[i + 1]);
        else if (!strcmp(argv[i], "-e")) maxb = parse_size(argv[i + 1]);
    }
    if (minb < 1 || minb > maxb) {
        if (rank == 0) fprintf(stderr, "allreduce-mpi: need 1 <= -b <= -e\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    float *buf = malloc(maxb);
    float *expect = malloc(13 * sizeof(float));
    if (!buf || !expect) MPI_Abort(MPI_COMM_WORLD, 1);
    for (int j = 0; j < 13; j++) {
        float s = 0;
        for (int r = 0; r < n; r++) s += (float)(((size_t)r * 31 + (size_t)j * 7) % 13);
        expect[j] = s;
    }
    if (rank == 0) {
        printf("# allreduce-mpi: %d ranks, f32 sum, in-place\n", n);
        printf("# %10s %12s %5s %5s %20s %10s %8s %8s %7s\n", "size", "count", "type", "redop",
               "algorithm", "time", "algbw", "busbw", "#wrong");
    }
    for (size_t b = minb; b <= maxb; b *= 2) {
        size_t count = b / sizeof(float);
        if (count == 0) continue;
        size_t bytes = count * sizeof(float);
        size_t iters = clamp(((size_t)512 << 20) / bytes, 5, 1000);
        size_t warmup = clamp(iters / 4, 2, 100);
        fill(buf, count, rank);
        for (size_t i = 0; i < warmup; i++)
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        for (size_t i = 0; i < iters; i++)
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        double t = (MPI_Wtime() - t0) / (double)iters;
        MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        fill(buf, count, rank);
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        long wrong = 0;
        for (size_t i = 0; i < count; i++) wrong += buf[i] != expect[i % 13];
        MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
        double algbw = (double)bytes / t / 1e9;
        double busbw = algbw * 2.0 * (n - 1) / n;
        if (rank == 0)
            printf("  %10zu %12zu %5s %5s %20s %10.2f %8.3f %8.3f %7ld\n", bytes, count, "f32", "sum",
                   "mpi", t * 1e6, algbw, busbw, wrong);
        fflush(stdout);
    }
    free(buf);
    free(expect);
    MPI_Finalize();
    return 0;
}
