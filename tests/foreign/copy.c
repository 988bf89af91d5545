// A C WASI program: upper-case file argv[1] into argv[2]. Built with clang and wasi-libc.
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: copy IN OUT\n"); return 2; }
    FILE *in = fopen(argv[1], "rb");
    if (!in) { perror(argv[1]); return 1; }
    FILE *out = fopen(argv[2], "wb");
    if (!out) { perror(argv[2]); return 1; }
    long n = 0; int c;
    while ((c = fgetc(in)) != EOF) { fputc(toupper(c), out); n++; }
    fclose(in); fclose(out);
    printf("c: copied %ld bytes\n", n);
    return 0;
}
