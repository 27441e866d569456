/* format.c - turn an entry back into the message printf would have made.
 *
 * The format is walked conversion by conversion; each one is handed to
 * snprintf with the argument converted back to the C type the conversion
 * names, so widths, precisions and flags behave exactly as in printf.
 * Strings are read through process_vm_readv, page by page: a dangling
 * pointer shows as <unreadable 0x...>, never as garbage or a crash.
 * Conversions registered with recorder_configure_type call their function.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

int recorder_read_string(__u64 address, char *buffer, size_t size)
{
    const size_t page = 4096;
    size_t copied = 0;
    if (!address || !size)
        return -1;
    while (copied + 1 < size) {
        __u64 at = address + copied;
        size_t chunk = page - (size_t)(at % page);
        if (chunk > size - 1 - copied)
            chunk = size - 1 - copied;
        struct iovec local = { buffer + copied, chunk };
        struct iovec remote = { (void *)(uintptr_t)at, chunk };
        ssize_t got = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
        if (got <= 0) {
            if (copied == 0)
                return -1;
            break;
        }
        void *end = memchr(buffer + copied, 0, (size_t)got);
        copied += (size_t)got;
        if (end)
            return (int)strlen(buffer);
    }
    buffer[copied] = 0;
    return (int)copied;
}

struct output {
    char *buffer;
    unsigned size;
    unsigned length;    /* what would have been written, like snprintf */
};

static void emit(struct output *out, const char *text, size_t length)
{
    if (out->length < out->size) {
        size_t room = out->size - 1 - out->length;
        memcpy(out->buffer + out->length, text, length < room ? length : room);
    }
    out->length += (unsigned)length;
}

static void emitf(struct output *out, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
/* Widths and precisions come from the traced process. glibc's vsnprintf
 * mallocs for a field past ~1000 characters (a deadlock in a signal
 * handler interrupting malloc) and puts %.15000f's digits on the stack
 * (past a 64 KiB alternate stack): every number in a conversion is cut
 * to FIELD_MAX, which a line of the dump cannot exceed anyway. */
#define FIELD_MAX 128

static void bound_fields(const char *format, char *bounded, size_t size)
{
    size_t n = 0;
    int in_conversion = 0;
    for (const char *p = format; *p && n + 4 < size;) {
        /* A '0' not after '.' or a digit is the zero-padding flag. */
        int zero_flag = *p == '0' && n > 0 && bounded[n - 1] != '.'
            && (bounded[n - 1] < '0' || bounded[n - 1] > '9');
        if (!in_conversion || zero_flag || *p < '0' || *p > '9') {
            if (!in_conversion)
                in_conversion = *p == '%';
            else if (!strchr("-+ #0'.*hlLqjzt", *p))
                in_conversion = 0;      /* the conversion letter ends it */
            bounded[n++] = *p++;
            continue;
        }
        unsigned long long value = 0;
        while (*p >= '0' && *p <= '9') {
            if (value <= FIELD_MAX)
                value = value * 10 + (unsigned)(*p - '0');
            p++;
        }
        n += (size_t)snprintf(bounded + n, size - n, "%llu",
                              value > FIELD_MAX ? FIELD_MAX : value);
    }
    bounded[n] = 0;
}

static void emitf(struct output *out, const char *format, ...)
{
    char piece[RECORDER_STRING_MAX + 64], bounded[128];
    va_list args;
    va_start(args, format);
    bound_fields(format, bounded, sizeof(bounded));
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    int length = vsnprintf(piece, sizeof(piece), bounded, args);
#pragma GCC diagnostic pop
    va_end(args);
    if (length > 0)
        emit(out, piece, (size_t)length < sizeof(piece)
                 ? (size_t)length : sizeof(piece) - 1);
}

static double as_double(const struct recorder_record *entry, unsigned index)
{
    __u64 bits = entry->args[index];
    if (RECORDER_ARG_KIND(entry->arg_types, index) != RECORDER_ARG_DOUBLE)
        return (double)(long long)bits;
    union { __u64 u; double d; } value = { bits };
    return value.d;
}

static long long as_signed(const struct recorder_record *entry,
                           unsigned index)
{
    if (RECORDER_ARG_KIND(entry->arg_types, index) == RECORDER_ARG_DOUBLE)
        return (long long)as_double(entry, index);
    return (long long)entry->args[index];
}

/* A conversion letter registered with recorder_configure_type, found the
 * way the seed finds it: at any position after '%' (so that `%t` is the
 * custom `t`, not the ptrdiff_t length modifier). Returns its position, or
 * NULL for a standard conversion. */
static const char *custom_conversion(const char *after_percent)
{
    for (const char *p = after_percent; *p; p++) {
        if (recorder_custom_types[(unsigned char)*p])
            return p;
        if (!strchr("-+ #0'123456789.*hlLqjzt", *p))
            return NULL;
    }
    return NULL;
}

/* Calls the custom conversion ending at `letter`; every '*' before it
 * consumes an argument, as in the seed. */
static void emit_custom(struct output *out, const struct recorder_record *entry,
                        const char *start, const char *letter,
                        unsigned *next_arg, unsigned nargs, __s64 trace)
{
    char spec[64], piece[RECORDER_STRING_MAX + 64];
    size_t length = (size_t)(letter + 1 - start);
    if (length >= sizeof(spec)) {
        emit(out, start, length);
        return;
    }
    memcpy(spec, start, length);
    spec[length] = 0;
    for (const char *c = start; c < letter; c++)
        if (*c == '*')
            (*next_arg)++;
    unsigned index = (*next_arg)++;
    if (index >= nargs) {
        emit(out, "<missing>", 9);
        return;
    }
    recorder_type_fn type = recorder_custom_types[(unsigned char)*letter];
    if (!type)      /* removed meanwhile */
        return;
    if (memchr(spec, '+', length))
        trace |= 1;
    size_t shown = type((intptr_t)trace, spec, piece, sizeof(piece),
                        (uintptr_t)entry->args[index]);
    emit(out, piece, shown < sizeof(piece) ? shown : sizeof(piece) - 1);
}

int recorder_format_entry(const struct recorder_record *entry, char *buffer,
                          unsigned size)
{
    return recorder_format_entry_traced(entry, buffer, size, 0);
}

int recorder_format_entry_traced(const struct recorder_record *entry,
                                 char *buffer, unsigned size, __s64 trace)
{
    struct output out = { buffer, size, 0 };
    char format[1024];
    unsigned next_arg = 0, nargs = entry->nargs;
    if (nargs > RECORDER_MAX_ARGS)
        nargs = RECORDER_MAX_ARGS;
    if (recorder_read_string(entry->format, format, sizeof(format)) < 0) {
        emitf(&out, "<unreadable format 0x%llx>",
              (unsigned long long)entry->format);
        goto done;
    }

    for (const char *p = format; *p;) {
        if (*p != '%') {
            const char *next = strchr(p, '%');
            size_t length = next ? (size_t)(next - p) : strlen(p);
            emit(&out, p, length);
            p += length;
            continue;
        }
        const char *custom = custom_conversion(p + 1);
        if (custom) {
            emit_custom(&out, entry, p, custom, &next_arg, nargs, trace);
            p = custom + 1;
            continue;
        }
        /* One conversion: %[flags][width][.precision][length]conversion */
        char spec[64];
        size_t n = 0;
        int too_long = 0;       /* flags and widths past `spec`: shown as is */
        const char *start = p++;
        while (*p && strchr("-+ #0'", *p))
            p++;
        if (*p == '*')
            p++;
        while (*p >= '0' && *p <= '9') p++;
        if (*p == '.') {
            p++;
            if (*p == '*')
                p++;
            while (*p >= '0' && *p <= '9') p++;
        }
        const char *length_start = p;
        while (*p && strchr("hlLqjzt", *p))
            p++;
        char conversion = *p ? *p++ : 0;
        /* Rebuild the conversion without its length modifier, '*' filled;
         * 4 bytes stay free for "ll", the conversion and the NUL. Every '*'
         * consumes its argument, whether it fits or not. */
        for (const char *c = start; c < length_start; c++) {
            if (*c == '*') {
                unsigned index = next_arg++;
                long long value = index < nargs ? as_signed(entry, index) : 0;
                char digits[16];
                int width = snprintf(digits, sizeof(digits), "%d", (int)value);
                if (width > 0 && n + (size_t)width + 4 <= sizeof(spec)) {
                    memcpy(spec + n, digits, (size_t)width);
                    n += (size_t)width;
                } else {
                    too_long = 1;
                }
                continue;
            }
            if (n + 1 + 4 <= sizeof(spec))
                spec[n++] = *c;
            else
                too_long = 1;
        }
        spec[n] = 0;

        if (conversion == '%') {
            emit(&out, "%", 1);
            continue;
        }
        if (conversion == 0 || conversion == 'n'
            || !strchr("diouxXcspfFeEgGaA", conversion)) {
            emit(&out, start, (size_t)(p - start));
            continue;
        }
        unsigned index = next_arg++;
        if (index >= nargs) {
            emit(&out, "<missing>", 9);
            continue;
        }
        if (too_long) {
            emit(&out, start, (size_t)(p - start));
            continue;
        }
        __u64 bits = entry->args[index];
        size_t length_modifier = (size_t)(p - 1 - length_start);
        char modifier = length_modifier ? length_start[0] : 0;
        if (length_modifier == 2 && modifier == 'h')
            modifier = 'H';     /* hh */
        switch (conversion) {
        case 'd': case 'i': {
            long long value = as_signed(entry, index);
            if (modifier == 'H') value = (signed char)value;
            else if (modifier == 'h') value = (short)value;
            else if (modifier == 0) value = (int)value;
            strcat(spec, "ll"); spec[n + 2] = conversion; spec[n + 3] = 0;
            emitf(&out, spec, value);
            break;
        }
        case 'o': case 'u': case 'x': case 'X': {
            /* Hex and octal of a float show its bits, as in the seed
             * (%x: the low 32 bits of the double, %lx: all 64). */
            int bits_of_double = conversion != 'u'
                && RECORDER_ARG_KIND(entry->arg_types, index)
                   == RECORDER_ARG_DOUBLE;
            unsigned long long value = bits_of_double
                ? (unsigned long long)bits
                : (unsigned long long)as_signed(entry, index);
            if (modifier == 'H') value = (unsigned char)value;
            else if (modifier == 'h') value = (unsigned short)value;
            else if (modifier == 0) value = (unsigned)value;
            strcat(spec, "ll"); spec[n + 2] = conversion; spec[n + 3] = 0;
            emitf(&out, spec, value);
            break;
        }
        case 'c':
            spec[n] = 'c'; spec[n + 1] = 0;
            emitf(&out, spec, (int)bits);
            break;
        case 'p':
            spec[n] = 'p'; spec[n + 1] = 0;
            emitf(&out, spec, (void *)(uintptr_t)bits);
            break;
        case 's': {
            char text[RECORDER_STRING_MAX];
            spec[n] = 's'; spec[n + 1] = 0;
            if (RECORDER_ARG_KIND(entry->arg_types, index)
                == RECORDER_ARG_DOUBLE)
                emitf(&out, "<double %g>", as_double(entry, index));
            else if (bits == 0)
                emitf(&out, spec, "(null)");
            else if (recorder_read_string(bits, text, sizeof(text)) < 0)
                emitf(&out, "<unreadable 0x%llx>", (unsigned long long)bits);
            else
                emitf(&out, spec, text);
            break;
        }
        default:    /* floating point */
            spec[n] = conversion; spec[n + 1] = 0;
            emitf(&out, spec, as_double(entry, index));
            break;
        }
    }
done:
    if (size)
        buffer[out.length < size ? out.length : size - 1] = 0;
    return (int)out.length;
}
