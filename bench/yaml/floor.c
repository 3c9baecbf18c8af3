/* The floor for bench/yaml/load.lua: libyaml's event parser alone over the
 * same files, no tree and no Lua. Prints the CPU milliseconds of one pass.
 *   cc -O2 floor.c -lyaml -o floor && ./floor FILE...                      */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <yaml.h>

int main(int argc, char **argv)
{
    int n = argc - 1;
    char **text = calloc((size_t)n, sizeof *text);
    size_t *len = calloc((size_t)n, sizeof *len);
    if (text == NULL || len == NULL)
        return 1;
    for (int i = 0; i < n; i++) {
        FILE *f = fopen(argv[i + 1], "rb");
        if (f == NULL)
            return 1;
        fseek(f, 0, SEEK_END);
        len[i] = (size_t)ftell(f);
        rewind(f);
        text[i] = malloc(len[i] + 1);
        if (text[i] == NULL || fread(text[i], 1, len[i], f) != len[i])
            return 1;
        fclose(f);
    }
    struct timespec a, b;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
    long events = 0;
    for (int i = 0; i < n; i++) {
        yaml_parser_t p;
        yaml_event_t ev;
        yaml_parser_initialize(&p);
        yaml_parser_set_input_string(&p, (const unsigned char *)text[i], len[i]);
        int done = 0;
        while (!done) {
            if (!yaml_parser_parse(&p, &ev))
                return 2;
            done = ev.type == YAML_STREAM_END_EVENT;
            yaml_event_delete(&ev);
            events++;
        }
        yaml_parser_delete(&p);
    }
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    printf("%.3f %ld\n",
           ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / 1e6, events);
    for (int i = 0; i < n; i++)
        free(text[i]);
    free(text);
    free(len);
    return 0;
}
