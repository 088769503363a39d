// SPDX-License-Identifier: MIT
/*
 * Freestanding helpers: memory functions gcc may call, a small formatter
 * (%s %c %d %u %x with l/ll, width and '0'), console output under a spinlock
 * in guest memory, and the command-line parser.
 */
#include "guest.h"

void *memset(void *dst, int c, size_t n)
{
	unsigned char *d = dst;

	while (n--)
		*d++ = (unsigned char)c;
	return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;

	while (n--)
		*d++ = *s++;
	return dst;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

struct out {
	char *buf;
	size_t size;
	size_t len;
};

static void out_c(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void out_num(struct out *o, uint64_t v, unsigned base, int width,
		    char pad, bool neg)
{
	char tmp[24];
	int n = 0;

	do {
		tmp[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (neg)
		tmp[n++] = '-';
	while (width-- > n)
		out_c(o, pad);
	while (n)
		out_c(o, tmp[--n]);
}

int vfmt(char *buf, size_t size, const char *f, va_list ap)
{
	struct out o = { buf, size, 0 };

	for (; *f; f++) {
		int width = 0, longs = 0;
		char pad = ' ';

		if (*f != '%') {
			out_c(&o, *f);
			continue;
		}
		f++;
		if (*f == '0')
			pad = '0';
		while (*f >= '0' && *f <= '9')
			width = width * 10 + (*f++ - '0');
		while (*f == 'l') {
			longs++;
			f++;
		}
		switch (*f) {
		case 's': {
			const char *s = va_arg(ap, const char *);

			if (!s)
				s = "(null)";
			for (int n = (int)strlen(s); width-- > n;)
				out_c(&o, ' ');
			while (*s)
				out_c(&o, *s++);
			break;
		}
		case 'c':
			out_c(&o, (char)va_arg(ap, int));
			break;
		case 'd': {
			int64_t v = longs ? va_arg(ap, int64_t) : va_arg(ap, int);

			out_num(&o, v < 0 ? -(uint64_t)v : (uint64_t)v, 10,
				width, pad, v < 0);
			break;
		}
		case 'u':
		case 'x': {
			uint64_t v = longs ? va_arg(ap, uint64_t)
					   : va_arg(ap, unsigned);

			out_num(&o, v, *f == 'u' ? 10 : 16, width, pad, false);
			break;
		}
		case '%':
			out_c(&o, '%');
			break;
		default:
			out_c(&o, '?');
			if (!*f)
				f--;
			break;
		}
	}
	if (size)
		buf[o.len < size ? o.len : size - 1] = 0;
	return (int)o.len;
}

int fmt(char *buf, size_t size, const char *f, ...)
{
	va_list ap;
	int n;

	va_start(ap, f);
	n = vfmt(buf, size, f, ap);
	va_end(ap);
	return n;
}

/* No LSR polling: a virtual UART takes a byte at once, and each port
 * access is a VM exit. The heartbeat byte never leaves here by accident. */
void serial_write(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		outb(COM1, s[i] == HEARTBEAT_BYTE ? '?' : s[i]);
}

void print_lock(void)
{
	while (__atomic_exchange_n(&g.print_lock, 1, __ATOMIC_ACQUIRE))
		while (g.print_lock)
			cpu_relax();
}

void print_unlock(void)
{
	__atomic_store_n(&g.print_lock, 0, __ATOMIC_RELEASE);
}

static void vprint_line(bool lock, const char *f, va_list ap)
{
	char buf[320];
	int n = vfmt(buf, sizeof(buf) - 1, f, ap);

	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (lock)
		print_lock();
	serial_write(buf, n);
	if (lock)
		print_unlock();
}

void gprintf(const char *f, ...)
{
	va_list ap;

	va_start(ap, f);
	vprint_line(true, f, ap);
	va_end(ap);
}

void gprintf_nolock(const char *f, ...)
{
	va_list ap;

	va_start(ap, f);
	vprint_line(false, f, ap);
	va_end(ap);
}

const char *pattern_name(enum pattern p)
{
	switch (p) {
	case PAT_RANDOM:
		return "random";
	case PAT_SEQUENTIAL:
		return "sequential";
	case PAT_HOT_COLD:
		return "hot-cold";
	case PAT_SMALL:
		return "small-writes";
	}
	return "?";
}

const char *fill_name(enum fill f)
{
	switch (f) {
	case FILL_MIX:
		return "mix";
	case FILL_SPARSE:
		return "sparse";
	case FILL_NOISE:
		return "noise";
	}
	return "?";
}

static bool word_is(const char *s, size_t n, const char *w)
{
	if (strlen(w) != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] != w[i])
			return false;
	return true;
}

static bool parse_u64(const char *s, size_t n, uint64_t *out)
{
	uint64_t v = 0;

	if (!n)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9' || v > UINT64_MAX / 10 - 1)
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return true;
}

static void parse_option(const char *key, size_t klen, const char *val,
			 size_t vlen, struct options *o)
{
	uint64_t v = 0;
	bool num = parse_u64(val, vlen, &v);

	if (word_is(key, klen, "mem") && num && v)
		o->mem_mib = v;
	else if (word_is(key, klen, "rate") && num)
		o->rate_mib = v;
	else if (word_is(key, klen, "vcpus") && num)
		o->vcpus = (uint32_t)v;
	else if (word_is(key, klen, "seed") && num)
		o->seed = v;
	else if (word_is(key, klen, "runtime") && num)
		o->runtime_s = v;
	else if (word_is(key, klen, "inject") && num)
		o->inject = v != 0;
	else if (word_is(key, klen, "sweep") && num && v)
		o->sweep_s = (uint32_t)v;
	else if (word_is(key, klen, "idle") && word_is(val, vlen, "spin"))
		o->idle_spin = true;
	else if (word_is(key, klen, "idle") && word_is(val, vlen, "halt"))
		o->idle_spin = false;
	else if (word_is(key, klen, "pattern") &&
		 word_is(val, vlen, "random"))
		o->pattern = PAT_RANDOM;
	else if (word_is(key, klen, "pattern") &&
		 word_is(val, vlen, "sequential"))
		o->pattern = PAT_SEQUENTIAL;
	else if (word_is(key, klen, "pattern") &&
		 word_is(val, vlen, "hot-cold"))
		o->pattern = PAT_HOT_COLD;
	else if (word_is(key, klen, "pattern") &&
		 word_is(val, vlen, "small-writes"))
		o->pattern = PAT_SMALL;
	else if (word_is(key, klen, "fill") && word_is(val, vlen, "mix"))
		o->fill = FILL_MIX;
	else if (word_is(key, klen, "fill") && word_is(val, vlen, "sparse"))
		o->fill = FILL_SPARSE;
	else if (word_is(key, klen, "fill") && word_is(val, vlen, "noise"))
		o->fill = FILL_NOISE;
}

/* "key=value key=value ...": unknown words (a loader may prepend the
 * kernel's path, as QEMU does) and invalid values are ignored; the banner
 * shows what was understood. */
void parse_cmdline(const char *s, struct options *o)
{
	while (*s) {
		const char *w, *eq = NULL;

		while (*s == ' ')
			s++;
		w = s;
		while (*s && *s != ' ') {
			if (*s == '=' && !eq)
				eq = s;
			s++;
		}
		if (eq)
			parse_option(w, (size_t)(eq - w), eq + 1,
				     (size_t)(s - eq - 1), o);
	}
}
