/* SPDX-License-Identifier: MIT */
/*
 * Replays every file of a seed corpus through a fuzz target (fuzz_target.h),
 * without libFuzzer, as a TAP test; linked once per target:
 *
 *   replay_loader DIR|FILE...     replay_qmp DIR|FILE...
 *
 * The file name says what must happen: "valid-*" inputs must be accepted,
 * "bad-*" ones rejected with an error message; any other file (a reproducer
 * saved by a fuzz run) must only not crash, leak or hang.
 */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_target.h"

#define REPLAY_MAX_FILES 4096
#define REPLAY_MAX_SIZE	 (64U << 20)

struct replay_list {
	char *paths[REPLAY_MAX_FILES];
	size_t n;
};

static int add_path(struct replay_list *l, const char *dir, const char *name)
{
	size_t len = strlen(dir) + strlen(name) + 2;
	char *p;

	if (l->n == REPLAY_MAX_FILES)
		return -E2BIG;
	p = malloc(len);
	if (!p)
		return -ENOMEM;
	if (dir[0])
		snprintf(p, len, "%s/%s", dir, name);
	else
		snprintf(p, len, "%s", name);
	l->paths[l->n++] = p;
	return 0;
}

static int add_dir(struct replay_list *l, const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int ret = 0;

	if (!d)
		return -errno;
	while (!ret && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		ret = add_path(l, dir, e->d_name);
	}
	closedir(d);
	return ret;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int read_file(const char *path, uint8_t **data, size_t *size)
{
	FILE *f = fopen(path, "rb");
	struct stat st;
	uint8_t *buf;

	if (!f)
		return -errno;
	if (fstat(fileno(f), &st) || st.st_size < 0 ||
	    (uint64_t)st.st_size > REPLAY_MAX_SIZE) {
		fclose(f);
		return -EFBIG;
	}
	/* One byte more so an empty file still gets a real buffer. */
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		fclose(f);
		return -ENOMEM;
	}
	if (fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
		free(buf);
		fclose(f);
		return -EIO;
	}
	fclose(f);
	*data = buf;
	*size = (size_t)st.st_size;
	return 0;
}

static const char *base_name(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

/* Replay one file; prints its TAP line; returns 1 if it passed. */
static int replay_one(size_t num, const char *path)
{
	const char *name = base_name(path);
	bool must_load = !strncmp(name, "valid-", 6);
	bool must_fail = !strncmp(name, "bad-", 4);
	struct kv_error err = {0};
	uint8_t *data = NULL;
	size_t size = 0;
	int ret;

	ret = read_file(path, &data, &size);
	if (ret < 0) {
		printf("not ok %zu - %s: cannot read: %s\n", num, name,
		       strerror(-ret));
		return 0;
	}
	ret = fuzz_target_run(data, size, &err);
	free(data);
	if (must_load && ret < 0) {
		printf("not ok %zu - %s: a valid input was rejected: %s\n", num,
		       name, err.msg);
		return 0;
	}
	if (must_fail && ret == 0) {
		printf("not ok %zu - %s: a malformed input was accepted\n", num,
		       name);
		return 0;
	}
	if (ret < 0)
		printf("ok %zu - %s: rejected (%s)\n", num, name, err.msg);
	else
		printf("ok %zu - %s: accepted %zu bytes\n", num, name, size);
	return 1;
}

int main(int argc, char **argv)
{
	static struct replay_list l;
	size_t passed = 0;

	for (int i = 1; i < argc; i++) {
		struct stat st;
		int ret;

		if (stat(argv[i], &st)) {
			printf("Bail out! %s: %s\n", argv[i], strerror(errno));
			return 1;
		}
		ret = S_ISDIR(st.st_mode) ? add_dir(&l, argv[i])
					  : add_path(&l, "", argv[i]);
		if (ret < 0) {
			printf("Bail out! %s: %s\n", argv[i], strerror(-ret));
			return 1;
		}
	}
	if (l.n == 0) {
		printf("1..0 # SKIP no corpus files given\n");
		return 0;
	}
	qsort(l.paths, l.n, sizeof(l.paths[0]), cmp_str);
	printf("1..%zu\n", l.n);
	for (size_t i = 0; i < l.n; i++) {
		fflush(stdout);
		passed += (size_t)replay_one(i + 1, l.paths[i]);
		free(l.paths[i]);
	}
	return passed == l.n ? 0 : 1;
}
