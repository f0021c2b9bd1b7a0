/*
 * vsock-tool: the guest side of the vsock end-to-end tests (tests/e2e/README.md).
 *
 * One static program for the busybox guests: it opens AF_VSOCK sockets, moves deterministic
 * pseudo-random data over them and prints what it sent and received as CRC-32s, one line per
 * event, so the host side (tests/e2e/vsock_host.py) can check every byte without a second
 * channel. It runs on the host only as `vsock-tool gen` (no socket at all), which the tests use
 * to check that the Python generator is the same as this one.
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -o vsock-tool vsock-tool.c
 *
 * Output: every line the tool prints (stdout, one write() per line so that concurrent
 * processes never interleave inside a line) is
 *     VT <tag> <event> [<value>] [key=value]...
 * The events are listed in usage() below and in tests/e2e/README.md.
 *
 * Data: the byte stream of a seed S is made of 4096-byte blocks; 64-bit little-endian word j
 * of block k is  P[j] ^ K[k]  with
 *     P[j] = mix64(S + (j + 1) * 0x9E3779B97F4A7C15)          (splitmix64's j-th output)
 *     K[k] = mix64(S ^ ((k + 1) * 0xA0761D6478BD642F))
 *     mix64(z): z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9; z = (z ^ z >> 27) * 0x94D049BB133111EB;
 *               return z ^ z >> 31                               (all arithmetic mod 2^64)
 * Every block differs from every other (K) and every word within a block (P), so a lost,
 * duplicated, reordered or shifted piece changes the CRC. Connection i of a --count N command
 * uses seed S + i. CRC-32 is zlib's (reflected 0xEDB88320, init and final xor 0xFFFFFFFF).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define TOOL_VERSION 1
#define BLOCK 4096
#define IO_BUFFER (256 * 1024)
/* Big enough for any vsock SEQPACKET message the tests send (the guest's receive buffer,
 * SO_VM_SOCKETS_BUFFER_SIZE, is 256 KiB by default); a larger one is reported as trunc. */
#define MSG_BUFFER (1024 * 1024)
#define MAX_MSGS 256

/* ----------------------------------------------------------------------------------------- */
/* Options and output */

static struct {
	bool seqpacket;
	unsigned count;
	uint64_t seed;
	const char *tag;
	unsigned timeout;
	size_t write_size; /* 0: the default cycle of write_cycle[] */
	bool dump;
	uint64_t progress; /* 0: no "progress" lines */
} opt = {.count = 1, .seed = 1, .timeout = 600};

/* The tag of the lines this process prints (a child of --count N appends ".<i>"). */
static char tag[64] = "vsock-tool";
/* Where VT lines go: stdout, except for `cat`, whose stdout is the data alone. */
static int out_fd = 1;
static char timeout_line[128];

static void write_all_fd(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		buf += n;
		len -= (size_t)n;
	}
}

/* Prints one "VT <tag> <event...>" line with a single write(). */
__attribute__((format(printf, 1, 2))) static void out(const char *fmt, ...)
{
	char line[1024];
	int n = snprintf(line, sizeof line, "VT %s ", tag);
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof line - 2)
		n = (int)sizeof line - 2;
	line[n++] = '\n';
	write_all_fd(out_fd, line, (size_t)n);
}

static const char *errname(int err)
{
	const char *name = strerrorname_np(err);
	return name ? name : "E?";
}

static void on_alarm(int sig)
{
	(void)sig;
	write_all_fd(out_fd, timeout_line, strlen(timeout_line));
	_exit(124);
}

/* (Re)arms the --timeout of this process: alarms are not inherited across fork(). */
static void set_tag(const char *base, int index)
{
	if (index < 0)
		snprintf(tag, sizeof tag, "%s", base);
	else
		snprintf(tag, sizeof tag, "%s.%d", base, index);
	snprintf(timeout_line, sizeof timeout_line, "VT %s timeout %u\n", tag, opt.timeout);
	alarm(opt.timeout);
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ----------------------------------------------------------------------------------------- */
/* CRC-32 (zlib) and the data generator */

static uint32_t crc_table[256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

static uint32_t crc32_update(uint32_t crc, const void *data, size_t len)
{
	const uint8_t *p = data;
	crc = ~crc;
	while (len--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

struct gen {
	uint64_t seed;
	uint64_t offset;	  /* next byte of the stream */
	uint64_t cached_block; /* index of block[], or UINT64_MAX */
	uint64_t pattern[BLOCK / 8];
	uint8_t block[BLOCK];
};

static void gen_init(struct gen *g, uint64_t seed)
{
	g->seed = seed;
	g->offset = 0;
	g->cached_block = UINT64_MAX;
	for (uint64_t j = 0; j < BLOCK / 8; j++)
		g->pattern[j] = mix64(seed + (j + 1) * 0x9E3779B97F4A7C15ull);
}

static void gen_fill(struct gen *g, void *dst, size_t len)
{
	uint8_t *d = dst;
	while (len > 0) {
		uint64_t k = g->offset / BLOCK;
		size_t within = (size_t)(g->offset % BLOCK);
		if (k != g->cached_block) {
			uint64_t key = mix64(g->seed ^ ((k + 1) * 0xA0761D6478BD642Full));
			for (size_t j = 0; j < BLOCK / 8; j++) {
				uint64_t w = g->pattern[j] ^ key;
				for (int b = 0; b < 8; b++)
					g->block[j * 8 + (size_t)b] = (uint8_t)(w >> (8 * b));
			}
			g->cached_block = k;
		}
		size_t n = BLOCK - within < len ? BLOCK - within : len;
		memcpy(d, g->block + within, n);
		d += n;
		len -= n;
		g->offset += n;
	}
}

/* ----------------------------------------------------------------------------------------- */
/* Argument parsing */

static void usage(FILE *f)
{
	fputs(
	    "usage: vsock-tool COMMAND [OPTIONS]\n"
	    "  listen PORT ACTION [ARGS]      accept --count connections on AF_VSOCK port PORT,\n"
	    "                                 each running ACTION in its own process\n"
	    "  connect CID PORT ACTION [ARGS] open --count concurrent connections (all connected\n"
	    "                                 before any ACTION starts), each running ACTION\n"
	    "  gen BYTES [--dump]             CRC-32 of BYTES generated bytes of --seed; --dump\n"
	    "                                 writes the bytes to stdout instead (no socket: runs\n"
	    "                                 on the host too)\n"
	    "  cid                            the guest's CID (ioctl on /dev/vsock)\n"
	    "  version                        tool version and CRC-32 of /proc/self/exe\n"
	    "ACTIONs (stream unless noted):\n"
	    "  send BYTES        write BYTES of the seed's stream, shutdown(SHUT_WR), then read to\n"
	    "                    EOF (the peer may answer after our half-close)\n"
	    "  recv              read to EOF\n"
	    "  recv-send BYTES   read to EOF, then write BYTES, shutdown(SHUT_WR), read to EOF\n"
	    "  send-recv BYTES   write BYTES while reading, concurrently; shutdown(SHUT_WR) after\n"
	    "                    the last byte; done at EOF with everything written\n"
	    "  echo              write back everything read; shutdown(SHUT_WR) at EOF\n"
	    "  cat               copy everything read to stdout, raw; the VT lines go to stderr\n"
	    "                    (boot=$(vsock-tool connect 2 P cat) takes the data only)\n"
	    "  expect-reset      (connect only) connect() must fail with ECONNRESET\n"
	    "  hold BYTES        write BYTES while reading BYTES, concurrently, and never shut\n"
	    "                    down: prints 'held' once both are done, then reads until the\n"
	    "                    connection ends, whoever ends it (exit 0 once 'held')\n"
	    "  send-msgs SIZE... (--seqpacket) send one message per SIZE, each the next SIZE bytes\n"
	    "                    of the stream; shutdown(SHUT_WR); then receive messages to EOF\n"
	    "  recv-msgs         (--seqpacket) receive messages to EOF\n"
	    "OPTIONS:\n"
	    "  --seqpacket       SOCK_SEQPACKET instead of SOCK_STREAM\n"
	    "  --count N         connections (default 1); connection i sends seed + i\n"
	    "  --seed S          seed of the data this side sends (default 1)\n"
	    "  --tag T           tag of the output lines (default: the command and port)\n"
	    "  --write-size N    bytes per write() (default: cycle 1, 1000, 4096, 32769, 65536,\n"
	    "                    131072, 262144, so large writes split into several descriptors)\n"
	    "  --timeout S       give up after S seconds: prints 'timeout', exit 124 (default 600)\n"
	    "  --progress N      (recv) print 'progress' each time another N bytes arrived\n"
	    "BYTES and sizes take K, M, G, T suffixes (binary). Output lines:\n"
	    "  VT <tag> listening <port> type=stream|seqpacket\n"
	    "  VT <tag> accepted peer=<cid>:<port> local=<cid>:<port>\n"
	    "  VT <tag> connected peer=<cid>:<port> local=<cid>:<port> ms=<connect time>\n"
	    "  VT <tag> connect-failed errno=<ENAME> ms=<connect time>\n"
	    "  VT <tag> sent <bytes> crc32=<hex8>\n"
	    "  VT <tag> recv <bytes> crc32=<hex8>\n"
	    "  VT <tag> end eof | end errno=<ENAME>       how the final read ended\n"
	    "  VT <tag> echo <bytes>\n"
	    "  VT <tag> progress <bytes> crc32=<hex8>       (--progress) received so far\n"
	    "  VT <tag> held <bytes>                        (hold) both ways done, still open\n"
	    "  VT <tag> after <bytes>                       (hold) bytes that came after 'held'\n"
	    "  VT <tag> msg-sent <index> <bytes> crc32=<hex8>\n"
	    "  VT <tag> msgs-sent <count> <bytes>\n"
	    "  VT <tag> msg <index> <bytes> crc32=<hex8> [trunc]\n"
	    "  VT <tag> msgs <count> <bytes>\n"
	    "  VT <tag> error <what> errno=<ENAME>\n"
	    "  VT <tag> timeout <seconds>\n"
	    "  VT <tag> gen <bytes> crc32=<hex8> seed=<seed>\n"
	    "  VT <tag> cid <cid>\n"
	    "  VT <tag> version <n> exe-crc32=<hex8> exe-bytes=<n>\n"
	    "Exit status: 0 success, 1 failure, 2 usage, 124 timeout.\n",
	    f);
}

static __attribute__((noreturn)) void die_usage(const char *what, const char *arg)
{
	fprintf(stderr, "vsock-tool: %s%s%s (see --help)\n", what, arg ? ": " : "", arg ? arg : "");
	exit(2);
}

static uint64_t parse_size(const char *s)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || end == s || *s == '-')
		die_usage("not a number", s);
	unsigned shift = 0;
	switch (*end) {
	case 'K': shift = 10; end++; break;
	case 'M': shift = 20; end++; break;
	case 'G': shift = 30; end++; break;
	case 'T': shift = 40; end++; break;
	default: break;
	}
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		die_usage("bad size", s);
	return (uint64_t)v << shift;
}

static uint32_t parse_u32(const char *s)
{
	uint64_t v = parse_size(s);
	if (v > UINT32_MAX)
		die_usage("out of range", s);
	return (uint32_t)v;
}

/* Takes the options out of argv (they may appear anywhere) and leaves the positional
 * arguments, in order, in pos[]; returns their count. */
static int parse_args(int argc, char **argv, char **pos)
{
	int npos = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			exit(0);
		} else if (!strcmp(a, "--seqpacket")) {
			opt.seqpacket = true;
		} else if (!strcmp(a, "--dump")) {
			opt.dump = true;
		} else if (!strcmp(a, "--count") || !strcmp(a, "--seed") || !strcmp(a, "--tag") ||
			   !strcmp(a, "--timeout") || !strcmp(a, "--write-size") ||
			   !strcmp(a, "--progress")) {
			if (!val)
				die_usage("missing value after", a);
			i++;
			if (!strcmp(a, "--count"))
				opt.count = parse_u32(val);
			else if (!strcmp(a, "--seed"))
				opt.seed = parse_size(val);
			else if (!strcmp(a, "--tag"))
				opt.tag = val;
			else if (!strcmp(a, "--timeout"))
				opt.timeout = parse_u32(val);
			else if (!strcmp(a, "--progress"))
				opt.progress = parse_size(val);
			else
				opt.write_size = (size_t)parse_u32(val);
		} else if (a[0] == '-' && a[1] == '-') {
			die_usage("unknown option", a);
		} else {
			pos[npos++] = argv[i];
		}
	}
	if (opt.count == 0)
		die_usage("--count must be at least 1", NULL);
	return npos;
}

/* ----------------------------------------------------------------------------------------- */
/* Actions on one connected socket */

struct action {
	const char *name;
	uint64_t bytes; /* send, recv-send, send-recv */
	int nsizes;	/* send-msgs */
	uint64_t sizes[MAX_MSGS];
};

static const size_t write_cycle[] = {1, 1000, 4096, 32769, 65536, 131072, 262144};

static size_t next_write_size(unsigned *turn)
{
	if (opt.write_size)
		return opt.write_size;
	size_t n = write_cycle[*turn % (sizeof write_cycle / sizeof write_cycle[0])];
	(*turn)++;
	return n;
}

/* Writes `bytes` of the stream of gen; returns 0, or the errno that stopped it. */
static int send_stream(int fd, struct gen *g, uint64_t bytes, uint32_t *crc)
{
	static uint8_t buf[IO_BUFFER];
	unsigned turn = 0;
	uint64_t done = 0;
	*crc = 0;
	while (done < bytes) {
		size_t n = next_write_size(&turn);
		if (n > sizeof buf)
			n = sizeof buf;
		if (n > bytes - done)
			n = (size_t)(bytes - done);
		gen_fill(g, buf, n);
		size_t off = 0;
		while (off < n) {
			ssize_t w = write(fd, buf + off, n - off);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				int err = errno;
				*crc = crc32_update(*crc, buf, off);
				out("sent %" PRIu64 " crc32=%08x", done + off, *crc);
				out("error write errno=%s", errname(err));
				return err;
			}
			off += (size_t)w;
		}
		*crc = crc32_update(*crc, buf, n);
		done += n;
	}
	out("sent %" PRIu64 " crc32=%08x", done, *crc);
	return 0;
}

/* Reads to EOF; prints "recv" and "end"; returns 0 on EOF, else the errno. */
static int recv_stream(int fd)
{
	static uint8_t buf[IO_BUFFER];
	uint64_t total = 0;
	uint32_t crc = 0;
	int err = 0;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = errno;
			break;
		}
		if (n == 0)
			break;
		crc = crc32_update(crc, buf, (size_t)n);
		/* --progress: one line per read that crossed another multiple of N. */
		if (opt.progress && total / opt.progress != (total + (uint64_t)n) / opt.progress)
			out("progress %" PRIu64 " crc32=%08x", total + (uint64_t)n, crc);
		total += (uint64_t)n;
	}
	out("recv %" PRIu64 " crc32=%08x", total, crc);
	if (err)
		out("end errno=%s", errname(err));
	else
		out("end eof");
	return err;
}

static int half_close(int fd)
{
	if (shutdown(fd, SHUT_WR) < 0) {
		out("error shutdown errno=%s", errname(errno));
		return -1;
	}
	return 0;
}

static int act_send(int fd, uint64_t bytes)
{
	struct gen g;
	uint32_t crc;
	gen_init(&g, opt.seed);
	if (send_stream(fd, &g, bytes, &crc) || half_close(fd))
		return 1;
	/* What the peer sends after our half-close; ECONNRESET here is a peer that closed
	 * without a clean shutdown, which the host decides whether to accept. */
	recv_stream(fd);
	return 0;
}

static int act_recv_send(int fd, uint64_t bytes)
{
	if (recv_stream(fd))
		return 1;
	return act_send(fd, bytes);
}

/* The writing half of the two-way actions: BYTES of the generated stream, written as the
 * non-blocking socket takes them. */
struct stream_writer {
	struct gen g;
	uint64_t bytes, sent;
	uint32_t crc;
	size_t len, off;
	unsigned turn;
};

static void writer_init(struct stream_writer *w, uint64_t bytes)
{
	memset(w, 0, sizeof *w);
	gen_init(&w->g, opt.seed);
	w->bytes = bytes;
}

/* One write(); returns 0, or the errno of a write that failed. */
static int writer_step(struct stream_writer *w, int fd)
{
	static uint8_t buf[IO_BUFFER];
	if (w->off == w->len) {
		w->len = next_write_size(&w->turn);
		if (w->len > sizeof buf)
			w->len = sizeof buf;
		if (w->len > w->bytes - w->sent)
			w->len = (size_t)(w->bytes - w->sent);
		gen_fill(&w->g, buf, w->len);
		w->off = 0;
	}
	ssize_t n = write(fd, buf + w->off, w->len - w->off);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : errno;
	w->crc = crc32_update(w->crc, buf + w->off, (size_t)n);
	w->off += (size_t)n;
	w->sent += (uint64_t)n;
	return 0;
}

/* Makes `fd` non-blocking; returns its previous flags, or -1 (reported). */
static int set_nonblocking(int fd)
{
	int flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
		out("error fcntl errno=%s", errname(errno));
		return -1;
	}
	return flags;
}

/* Both directions at once on a non-blocking socket, driven by poll(). */
static int act_send_recv(int fd, uint64_t bytes)
{
	static uint8_t rbuf[IO_BUFFER];
	if (set_nonblocking(fd) < 0)
		return 1;
	struct stream_writer w;
	writer_init(&w, bytes);
	uint64_t received = 0;
	uint32_t rcrc = 0;
	bool wdone = bytes == 0, eof = false;
	int rerr = 0;
	if (wdone && half_close(fd))
		return 1;
	/* The peer may half-close before we finished writing: keep writing until done. */
	while (!eof || !wdone) {
		struct pollfd p = {.fd = fd,
				   .events = (short)((eof ? 0 : POLLIN) | (wdone ? 0 : POLLOUT))};
		if (poll(&p, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			out("error poll errno=%s", errname(errno));
			return 1;
		}
		if (!wdone && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
			int werr = writer_step(&w, fd);
			if (werr) {
				out("sent %" PRIu64 " crc32=%08x", w.sent, w.crc);
				out("error write errno=%s", errname(werr));
				return 1;
			}
			if (w.sent == bytes) {
				wdone = true;
				out("sent %" PRIu64 " crc32=%08x", w.sent, w.crc);
				if (half_close(fd))
					return 1;
			}
		}
		if (!eof && (p.revents & (POLLIN | POLLERR | POLLHUP))) {
			ssize_t n = read(fd, rbuf, sizeof rbuf);
			if (n < 0 && errno != EAGAIN && errno != EINTR) {
				rerr = errno;
				break;
			}
			if (n == 0)
				eof = true;
			if (n > 0) {
				rcrc = crc32_update(rcrc, rbuf, (size_t)n);
				received += (uint64_t)n;
			}
		}
	}
	out("recv %" PRIu64 " crc32=%08x", received, rcrc);
	if (rerr)
		out("end errno=%s", errname(rerr));
	else
		out("end eof");
	if (!wdone) {
		/* A read error ended the loop before we sent everything. */
		out("sent %" PRIu64 " crc32=%08x", w.sent, w.crc);
		out("error unsent %" PRIu64, bytes - w.sent);
		return 1;
	}
	return rerr ? 1 : 0;
}

/* Like send-recv without the shutdown: BYTES each way at once, then "held" with the
 * connection left open, then reads until it ends (the peer's close, a reset, or anything
 * else: the caller judges how it ended, from the "end" line). */
static int act_hold(int fd, uint64_t bytes)
{
	static uint8_t rbuf[IO_BUFFER];
	int flags = set_nonblocking(fd);
	if (flags < 0)
		return 1;
	struct stream_writer w;
	writer_init(&w, bytes);
	uint64_t received = 0;
	uint32_t rcrc = 0;
	bool eof = false;
	int err = 0;
	while (w.sent < bytes || received < bytes) {
		struct pollfd p = {.fd = fd,
				   .events = (short)((received < bytes ? POLLIN : 0) |
						     (w.sent < bytes ? POLLOUT : 0))};
		if (poll(&p, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			out("error poll errno=%s", errname(errno));
			return 1;
		}
		if (w.sent < bytes && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
			err = writer_step(&w, fd);
			if (err) {
				out("error write errno=%s", errname(err));
				break;
			}
		}
		if (received < bytes && (p.revents & (POLLIN | POLLERR | POLLHUP))) {
			/* Never past BYTES: what follows is counted by "after". */
			size_t want = bytes - received < sizeof rbuf ? (size_t)(bytes - received)
								     : sizeof rbuf;
			ssize_t n = read(fd, rbuf, want);
			if (n < 0 && errno != EAGAIN && errno != EINTR) {
				err = errno;
				break;
			}
			if (n == 0) {
				eof = true;
				break;
			}
			if (n > 0) {
				rcrc = crc32_update(rcrc, rbuf, (size_t)n);
				received += (uint64_t)n;
			}
		}
	}
	out("sent %" PRIu64 " crc32=%08x", w.sent, w.crc);
	out("recv %" PRIu64 " crc32=%08x", received, rcrc);
	if (eof || err) {
		/* Ended before the hold. */
		if (err)
			out("end errno=%s", errname(err));
		else
			out("end eof");
		return 1;
	}
	out("held %" PRIu64, bytes);
	if (fcntl(fd, F_SETFL, flags) < 0) {
		out("error fcntl errno=%s", errname(errno));
		return 1;
	}
	uint64_t after = 0;
	for (;;) {
		ssize_t n = read(fd, rbuf, sizeof rbuf);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = errno;
			break;
		}
		if (n == 0)
			break;
		after += (uint64_t)n;
	}
	out("after %" PRIu64, after);
	if (err)
		out("end errno=%s", errname(err));
	else
		out("end eof");
	return 0;
}

static int act_echo(int fd)
{
	static uint8_t buf[IO_BUFFER];
	uint64_t total = 0;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			out("echo %" PRIu64, total);
			out("error read errno=%s", errname(errno));
			return 1;
		}
		if (n == 0)
			break;
		size_t off = 0;
		while (off < (size_t)n) {
			ssize_t w = write(fd, buf + off, (size_t)n - off);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				out("echo %" PRIu64, total + off);
				out("error write errno=%s", errname(errno));
				return 1;
			}
			off += (size_t)w;
		}
		total += (uint64_t)n;
	}
	out("echo %" PRIu64, total);
	return half_close(fd) ? 1 : 0;
}

static int act_cat(int fd)
{
	static uint8_t buf[IO_BUFFER];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			out("error read errno=%s", errname(errno));
			return 1;
		}
		if (n == 0)
			return 0;
		write_all_fd(1, (const char *)buf, (size_t)n);
	}
}

/* Receives SEQPACKET messages to EOF, one "msg" line each; returns 0 at EOF. */
static int recv_msgs(int fd)
{
	static uint8_t *buf;
	if (!buf && !(buf = malloc(MSG_BUFFER))) {
		out("error malloc errno=ENOMEM");
		return 1;
	}
	uint64_t count = 0, total = 0;
	int err = 0;
	for (;;) {
		struct iovec iov = {.iov_base = buf, .iov_len = MSG_BUFFER};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
		/* MSG_TRUNC: the return value is the message's real length even when it did not
		 * fit, so an oversized message shows as such instead of as a short one. */
		ssize_t n = recvmsg(fd, &mh, MSG_TRUNC);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = errno;
			break;
		}
		if (n == 0)
			break;
		size_t got = (size_t)n < MSG_BUFFER ? (size_t)n : MSG_BUFFER;
		out("msg %" PRIu64 " %zd crc32=%08x%s", count, n, crc32_update(0, buf, got),
		    (mh.msg_flags & MSG_TRUNC) ? " trunc" : "");
		count++;
		total += (uint64_t)n;
	}
	out("msgs %" PRIu64 " %" PRIu64, count, total);
	if (err)
		out("end errno=%s", errname(err));
	else
		out("end eof");
	return err ? 1 : 0;
}

static int act_send_msgs(int fd, const struct action *a)
{
	uint64_t largest = 0, total = 0;
	for (int i = 0; i < a->nsizes; i++)
		largest = a->sizes[i] > largest ? a->sizes[i] : largest;
	uint8_t *buf = malloc(largest ? largest : 1);
	if (!buf) {
		out("error malloc errno=ENOMEM");
		return 1;
	}
	struct gen g;
	gen_init(&g, opt.seed);
	for (int i = 0; i < a->nsizes; i++) {
		size_t n = (size_t)a->sizes[i];
		gen_fill(&g, buf, n);
		ssize_t w;
		do
			w = send(fd, buf, n, MSG_EOR);
		while (w < 0 && errno == EINTR);
		if (w < 0) {
			out("error send msg %d of %zu bytes errno=%s", i, n, errname(errno));
			free(buf);
			return 1;
		}
		if ((size_t)w != n) {
			out("error send msg %d of %zu bytes sent %zd", i, n, w);
			free(buf);
			return 1;
		}
		out("msg-sent %d %zu crc32=%08x", i, n, crc32_update(0, buf, n));
		total += n;
	}
	free(buf);
	out("msgs-sent %d %" PRIu64, a->nsizes, total);
	if (half_close(fd))
		return 1;
	return recv_msgs(fd);
}

static int run_action(int fd, const struct action *a)
{
	const char *n = a->name;
	if (!strcmp(n, "send"))
		return act_send(fd, a->bytes);
	if (!strcmp(n, "recv"))
		return recv_stream(fd) ? 1 : 0;
	if (!strcmp(n, "recv-send"))
		return act_recv_send(fd, a->bytes);
	if (!strcmp(n, "send-recv"))
		return act_send_recv(fd, a->bytes);
	if (!strcmp(n, "hold"))
		return act_hold(fd, a->bytes);
	if (!strcmp(n, "echo"))
		return act_echo(fd);
	if (!strcmp(n, "cat"))
		return act_cat(fd);
	if (!strcmp(n, "send-msgs"))
		return act_send_msgs(fd, a);
	if (!strcmp(n, "recv-msgs"))
		return recv_msgs(fd);
	out("error unknown action %s", n);
	return 2;
}

/* Checks ACTION and its arguments before any socket is opened. */
static void parse_action(char **pos, int npos, struct action *a, bool connecting)
{
	if (npos < 1)
		die_usage("missing ACTION", NULL);
	a->name = pos[0];
	const char *n = a->name;
	bool stream_only = !strcmp(n, "send") || !strcmp(n, "recv") || !strcmp(n, "recv-send") ||
			   !strcmp(n, "send-recv") || !strcmp(n, "echo") || !strcmp(n, "cat") ||
			   !strcmp(n, "hold");
	bool msgs = !strcmp(n, "send-msgs") || !strcmp(n, "recv-msgs");
	bool takes_bytes = !strcmp(n, "send") || !strcmp(n, "recv-send") || !strcmp(n, "send-recv") ||
			   !strcmp(n, "hold");
	if (!stream_only && !msgs && strcmp(n, "expect-reset"))
		die_usage("unknown ACTION", n);
	if (!strcmp(n, "expect-reset") && !connecting)
		die_usage("expect-reset needs connect", NULL);
	if (!strcmp(n, "cat"))
		out_fd = 2;
	if (stream_only && opt.seqpacket)
		die_usage("this ACTION is for stream sockets", n);
	if (msgs && !opt.seqpacket)
		die_usage("this ACTION needs --seqpacket", n);
	if (takes_bytes) {
		if (npos != 2)
			die_usage("ACTION takes one BYTES argument", n);
		a->bytes = parse_size(pos[1]);
	} else if (!strcmp(n, "send-msgs")) {
		if (npos < 2 || npos - 1 > MAX_MSGS)
			die_usage("send-msgs takes 1 to 256 sizes", NULL);
		for (int i = 1; i < npos; i++) {
			a->sizes[i - 1] = parse_size(pos[i]);
			if (a->sizes[i - 1] == 0 || a->sizes[i - 1] > MSG_BUFFER)
				die_usage("message size out of 1..1M", pos[i]);
		}
		a->nsizes = npos - 1;
	} else if (npos != 1) {
		die_usage("ACTION takes no argument", n);
	}
}

/* ----------------------------------------------------------------------------------------- */
/* Commands */

static int vsock_socket(void)
{
	int fd = socket(AF_VSOCK, (opt.seqpacket ? SOCK_SEQPACKET : SOCK_STREAM) | SOCK_CLOEXEC, 0);
	if (fd < 0)
		out("error socket errno=%s", errname(errno));
	return fd;
}

static void addr_str(int fd, bool peer, char *buf, size_t len)
{
	struct sockaddr_vm sa;
	socklen_t sl = sizeof sa;
	int r = peer ? getpeername(fd, (struct sockaddr *)&sa, &sl)
		     : getsockname(fd, (struct sockaddr *)&sa, &sl);
	if (r < 0)
		snprintf(buf, len, "?(%s)", errname(errno));
	else
		snprintf(buf, len, "%u:%u", sa.svm_cid, sa.svm_port);
}

/* Waits for every child; returns 0 if all exited 0, else the first non-zero status. */
static int wait_children(void)
{
	int rc = 0, status;
	pid_t pid;
	while ((pid = wait(&status)) > 0 || (pid < 0 && errno == EINTR)) {
		if (pid < 0)
			continue;
		int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		if (code && !rc)
			rc = code;
	}
	return rc;
}

static int cmd_listen(char **pos, int npos)
{
	if (npos < 2)
		die_usage("usage: listen PORT ACTION [ARGS]", NULL);
	uint32_t port = parse_u32(pos[1]);
	struct action a = {0};
	parse_action(pos + 2, npos - 2, &a, false);
	char base[48];
	snprintf(base, sizeof base, "%s", opt.tag ? opt.tag : "listen");
	set_tag(base, -1);

	int lfd = vsock_socket();
	if (lfd < 0)
		return 1;
	struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
	if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		out("error bind errno=%s", errname(errno));
		return 1;
	}
	if (listen(lfd, 128) < 0) {
		out("error listen errno=%s", errname(errno));
		return 1;
	}
	out("listening %u type=%s", port, opt.seqpacket ? "seqpacket" : "stream");
	uint64_t base_seed = opt.seed;
	for (unsigned i = 0; i < opt.count; i++) {
		int fd;
		do
			fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		while (fd < 0 && errno == EINTR);
		if (fd < 0) {
			out("error accept errno=%s", errname(errno));
			wait_children();
			return 1;
		}
		pid_t pid = opt.count > 1 ? fork() : 0;
		if (pid < 0) {
			out("error fork errno=%s", errname(errno));
			return 1;
		}
		if (pid == 0) {
			close(lfd);
			if (opt.count > 1)
				set_tag(base, (int)i);
			opt.seed = base_seed + i;
			char peer[48], local[48];
			addr_str(fd, true, peer, sizeof peer);
			addr_str(fd, false, local, sizeof local);
			out("accepted peer=%s local=%s", peer, local);
			int rc = run_action(fd, &a);
			close(fd);
			if (opt.count > 1)
				_exit(rc);
			return rc;
		}
		close(fd);
	}
	close(lfd);
	return wait_children();
}

/* Connects; prints "connected" or "connect-failed"; returns the fd or -errno. */
static int do_connect(uint32_t cid, uint32_t port)
{
	int fd = vsock_socket();
	if (fd < 0)
		return -EBADF;
	struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
	uint64_t start = now_ms();
	int r;
	do
		r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
	while (r < 0 && errno == EINTR);
	uint64_t ms = now_ms() - start;
	if (r < 0) {
		int err = errno;
		out("connect-failed errno=%s ms=%" PRIu64, errname(err), ms);
		close(fd);
		return -err;
	}
	char peer[48], local[48];
	addr_str(fd, true, peer, sizeof peer);
	addr_str(fd, false, local, sizeof local);
	out("connected peer=%s local=%s ms=%" PRIu64, peer, local, ms);
	return fd;
}

static int connect_and_run(uint32_t cid, uint32_t port, const struct action *a, int ready_fd,
			   int go_fd)
{
	int fd = do_connect(cid, port);
	bool expect_reset = !strcmp(a->name, "expect-reset");
	if (ready_fd >= 0) {
		/* Barrier: every connection is open before any of them moves data. */
		write_all_fd(ready_fd, fd >= 0 ? "1" : "0", 1);
		close(ready_fd);
		char c;
		while (read(go_fd, &c, 1) < 0 && errno == EINTR)
			;
		close(go_fd);
	}
	if (expect_reset) {
		if (fd >= 0) {
			out("error connect succeeded, expected ECONNRESET");
			close(fd);
			return 1;
		}
		return fd == -ECONNRESET ? 0 : 1;
	}
	if (fd < 0)
		return 1;
	int rc = run_action(fd, a);
	close(fd);
	return rc;
}

static int cmd_connect(char **pos, int npos)
{
	if (npos < 3)
		die_usage("usage: connect CID PORT ACTION [ARGS]", NULL);
	uint32_t cid = parse_u32(pos[1]);
	uint32_t port = parse_u32(pos[2]);
	struct action a = {0};
	parse_action(pos + 3, npos - 3, &a, true);
	char base[48];
	snprintf(base, sizeof base, "%s", opt.tag ? opt.tag : "connect");
	set_tag(base, -1);
	if (opt.count == 1)
		return connect_and_run(cid, port, &a, -1, -1);

	int ready[2], go[2];
	if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(go, O_CLOEXEC) < 0) {
		out("error pipe errno=%s", errname(errno));
		return 1;
	}
	uint64_t base_seed = opt.seed;
	unsigned started = 0;
	for (unsigned i = 0; i < opt.count; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			out("error fork errno=%s", errname(errno));
			break;
		}
		if (pid == 0) {
			close(ready[0]);
			close(go[1]);
			set_tag(base, (int)i);
			opt.seed = base_seed + i;
			_exit(connect_and_run(cid, port, &a, ready[1], go[0]));
		}
		started++;
	}
	close(ready[1]);
	close(go[0]);
	/* One byte per child once its connect() returned (or EOF if children died). */
	unsigned ready_count = 0;
	char buf[64];
	while (ready_count < started) {
		ssize_t n = read(ready[0], buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		ready_count += (unsigned)n;
	}
	close(ready[0]);
	close(go[1]); /* go: children see EOF */
	int rc = wait_children();
	return started == opt.count ? rc : 1;
}

static int cmd_gen(char **pos, int npos)
{
	if (npos != 2)
		die_usage("usage: gen BYTES [--seed S] [--dump]", NULL);
	uint64_t bytes = parse_size(pos[1]);
	set_tag(opt.tag ? opt.tag : "gen", -1);
	static uint8_t buf[IO_BUFFER];
	struct gen g;
	gen_init(&g, opt.seed);
	uint32_t crc = 0;
	for (uint64_t done = 0; done < bytes;) {
		size_t n = bytes - done < sizeof buf ? (size_t)(bytes - done) : sizeof buf;
		gen_fill(&g, buf, n);
		if (opt.dump)
			write_all_fd(1, (const char *)buf, n);
		else
			crc = crc32_update(crc, buf, n);
		done += n;
	}
	if (!opt.dump)
		out("gen %" PRIu64 " crc32=%08x seed=%" PRIu64, bytes, crc, opt.seed);
	return 0;
}

static int cmd_cid(void)
{
	set_tag(opt.tag ? opt.tag : "cid", -1);
	int fd = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
	unsigned int cid;
	if (fd < 0 || ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) < 0) {
		out("error cid errno=%s", errname(errno));
		return 1;
	}
	close(fd);
	out("cid %u", cid);
	return 0;
}

static int cmd_version(void)
{
	set_tag(opt.tag ? opt.tag : "version", -1);
	static uint8_t buf[IO_BUFFER];
	int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		out("error open /proc/self/exe errno=%s", errname(errno));
		return 1;
	}
	uint32_t crc = 0;
	uint64_t total = 0;
	ssize_t n;
	while ((n = read(fd, buf, sizeof buf)) > 0) {
		crc = crc32_update(crc, buf, (size_t)n);
		total += (uint64_t)n;
	}
	close(fd);
	out("version %d exe-crc32=%08x exe-bytes=%" PRIu64, TOOL_VERSION, crc, total);
	return 0;
}

int main(int argc, char **argv)
{
	char *pos[MAX_MSGS + 8];
	if (argc > MAX_MSGS + 8)
		die_usage("too many arguments", NULL);
	int npos = parse_args(argc, argv, pos);
	if (npos < 1) {
		usage(stderr);
		return 2;
	}
	crc_init();
	/* A peer that goes away shows as EPIPE on write, reported, not as a silent death. */
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = {.sa_handler = on_alarm};
	sigaction(SIGALRM, &sa, NULL);
	const char *cmd = pos[0];
	if (!strcmp(cmd, "listen"))
		return cmd_listen(pos, npos);
	if (!strcmp(cmd, "connect"))
		return cmd_connect(pos, npos);
	if (!strcmp(cmd, "gen"))
		return cmd_gen(pos, npos);
	if (!strcmp(cmd, "cid") && npos == 1)
		return cmd_cid();
	if (!strcmp(cmd, "version") && npos == 1)
		return cmd_version();
	die_usage("unknown command", cmd);
}
