/*
 * LD_PRELOAD shim for trafgen inside network namespaces (see shared RECIPES.md,
 * "Benchmarking forwarding"). Built by `cargo xtask bench` with:
 *   cc -shared -fPIC -O2 -o trafgen_shim.so trafgen_shim.c -ldl
 *
 * 1. AF_PACKET sockets get SO_SNDBUFFORCE (root ignores net.core.wmem_max, which
 *    cannot be raised from inside a namespace), both at socket() and whenever the
 *    program asks for SO_SNDBUF.
 * 2. sendto()/send() on an AF_PACKET socket failing with EAGAIN reports ENOBUFS
 *    instead, which trafgen treats as "ring busy, retry" rather than aborting with
 *    "Flushing TX_RING failed".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>

#define FP_FORCED_SNDBUF (8 * 1024 * 1024)

typedef int (*socket_fn)(int, int, int);
typedef int (*setsockopt_fn)(int, int, int, const void *, socklen_t);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef ssize_t (*send_fn)(int, const void *, size_t, int);

static int is_packet_socket(int fd)
{
	int domain = 0;
	socklen_t len = sizeof(domain);

	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0)
		return 0;
	return domain == AF_PACKET;
}

static void force_sndbuf(setsockopt_fn real, int fd, int bytes)
{
	int saved = errno;

	(void)real(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof(bytes));
	errno = saved;
}

int socket(int domain, int type, int protocol)
{
	static socket_fn real_socket;
	static setsockopt_fn real_setsockopt;
	int fd;

	if (!real_socket)
		real_socket = (socket_fn)dlsym(RTLD_NEXT, "socket");
	if (!real_setsockopt)
		real_setsockopt = (setsockopt_fn)dlsym(RTLD_NEXT, "setsockopt");
	if (!real_socket) {
		errno = ENOSYS;
		return -1;
	}
	fd = real_socket(domain, type, protocol);
	if (fd >= 0 && domain == AF_PACKET && real_setsockopt)
		force_sndbuf(real_setsockopt, fd, FP_FORCED_SNDBUF);
	return fd;
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	static setsockopt_fn real;

	if (!real)
		real = (setsockopt_fn)dlsym(RTLD_NEXT, "setsockopt");
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	if (level == SOL_SOCKET && name == SO_SNDBUF && val && len >= sizeof(int) &&
	    is_packet_socket(fd)) {
		int want = *(const int *)val;

		if (want < FP_FORCED_SNDBUF)
			want = FP_FORCED_SNDBUF;
		if (real(fd, SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof(want)) == 0)
			return 0;
	}
	return real(fd, level, name, val, len);
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags,
	       const struct sockaddr *addr, socklen_t alen)
{
	static sendto_fn real;
	ssize_t ret;

	if (!real)
		real = (sendto_fn)dlsym(RTLD_NEXT, "sendto");
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	ret = real(fd, buf, len, flags, addr, alen);
	if (ret < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && is_packet_socket(fd))
		errno = ENOBUFS;
	return ret;
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	static send_fn real;
	ssize_t ret;

	if (!real)
		real = (send_fn)dlsym(RTLD_NEXT, "send");
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	ret = real(fd, buf, len, flags);
	if (ret < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && is_packet_socket(fd))
		errno = ENOBUFS;
	return ret;
}
