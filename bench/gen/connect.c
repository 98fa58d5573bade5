/*
 * Connect-rate load generator for the benchmark: plain TCP, and TLS/mTLS when built with
 * -DWITH_TLS against OpenSSL (-lssl -lcrypto).
 *
 * `concurrency` loops, each: non-blocking TCP connect, (TLS: a full handshake, verifying the
 * server's certificate against the CA and the server name, offering the client certificate when
 * one is given; no session resumption), CONNECT (MQTT 3.1.1, clean session, keep-alive 60,
 * optional user name and password), wait for CONNACK, check its return code, send DISCONNECT
 * (TLS: then close_notify) and close; then start again, until `duration_ms` has passed. One
 * thread, epoll, no allocation per plain connect: the generator should cost the machine far less
 * than the broker it measures (the Node generator in bench/lib/connections.ts uses about as much
 * CPU as Mosquitto does, and nearly a whole core on TLS handshakes).
 *
 * Usage: connect [--ca FILE --servername NAME [--cert FILE --key FILE]]
 *                HOST PORT CONCURRENCY DURATION_MS CLIENT_ID_PREFIX [USERNAME PASSWORD]
 * Prints one JSON line: {"connects":N,"failures":N,"failure":"first failure or null",
 *                        "wallMs":N,"cpuMs":N}
 * Exit status 0 when every connect succeeded, 1 otherwise, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifdef WITH_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

enum { IDLE, CONNECTING, HANDSHAKE, WAIT_CONNACK };

struct slot {
  int fd;
  int state;
  unsigned char in[8];
  int have;
#ifdef WITH_TLS
  SSL *ssl;
#endif
};

#ifdef WITH_TLS
static SSL_CTX *ctx; /* NULL: plain TCP */
static const char *servername;
#endif

static struct sockaddr_in addr;
static const char *prefix;
static const char *user;
static const char *pass;
static long long seq;
static long long connects, failures;
static char failure[256];

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void fail(const char *what, int err) {
  failures++;
  if (failure[0] == 0) snprintf(failure, sizeof failure, "%s: %s", what, err ? strerror(err) : "unexpected reply");
}

static int put_str(unsigned char *p, const char *s, size_t n) {
  p[0] = (unsigned char)(n >> 8);
  p[1] = (unsigned char)n;
  memcpy(p + 2, s, n);
  return (int)(2 + n);
}

/* Encodes CONNECT for a fresh client id into buf; returns its length. */
static int encode_connect(unsigned char *buf) {
  char id[96];
  int idn = snprintf(id, sizeof id, "%s-%lld", prefix, seq++);
  size_t un = user ? strlen(user) : 0, pn = pass ? strlen(pass) : 0;
  int remaining = 10 + 2 + idn + (user ? 2 + (int)un : 0) + (pass ? 2 + (int)pn : 0);
  int o = 0;
  buf[o++] = 0x10;
  int r = remaining;
  do {
    unsigned char b = r % 128;
    r /= 128;
    if (r > 0) b |= 0x80;
    buf[o++] = b;
  } while (r > 0);
  o += put_str(buf + o, "MQTT", 4);
  buf[o++] = 4;                                      /* protocol level 3.1.1 */
  buf[o++] = 0x02 | (user ? 0x80 : 0) | (pass ? 0x40 : 0); /* clean session, credentials */
  buf[o++] = 0;
  buf[o++] = 60; /* keep-alive */
  o += put_str(buf + o, id, (size_t)idn);
  if (user) o += put_str(buf + o, user, un);
  if (pass) o += put_str(buf + o, pass, pn);
  return o;
}

static void start(int ep, struct slot *s) {
  s->have = 0;
  s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s->fd < 0) {
    fail("socket", errno);
    s->state = IDLE;
    return;
  }
  int one = 1;
  setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int rc = connect(s->fd, (struct sockaddr *)&addr, sizeof addr);
  if (rc < 0 && errno != EINPROGRESS) {
    fail("connect", errno);
    close(s->fd);
    s->state = IDLE;
    return;
  }
  s->state = CONNECTING;
  struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = s};
  epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
}

#ifdef WITH_TLS
static void tls_fail(const char *what, int code) {
  failures++;
  if (failure[0] == 0) {
    unsigned long e = ERR_peek_error();
    char msg[160] = "";
    if (e) ERR_error_string_n(e, msg, sizeof msg);
    snprintf(failure, sizeof failure, "%s: SSL error %d%s%s", what, code, msg[0] ? " " : "", msg);
  }
  ERR_clear_error();
}

/* Waits for the socket to become readable or writable, as OpenSSL asked. */
static void tls_wait(int ep, struct slot *s, int err) {
  struct epoll_event ev = {.events = err == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN, .data.ptr = s};
  epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
}
#endif

static void finish(int ep, struct slot *s, int ok);

/* The connection is up (TCP connected, TLS handshake done): sends CONNECT and waits for CONNACK. */
static void send_connect(int ep, struct slot *s) {
  unsigned char buf[512];
  int m = encode_connect(buf);
#ifdef WITH_TLS
  if (s->ssl) {
    int w = SSL_write(s->ssl, buf, m);
    if (w != m) {
      tls_fail("write CONNECT", SSL_get_error(s->ssl, w));
      finish(ep, s, 0);
      return;
    }
  } else
#endif
  if (write(s->fd, buf, (size_t)m) != m) {
    fail("write CONNECT", errno);
    finish(ep, s, 0);
    return;
  }
  s->state = WAIT_CONNACK;
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
  epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
}

#ifdef WITH_TLS
/* Drives the handshake one step; on success goes on to CONNECT. */
static void handshake(int ep, struct slot *s) {
  int r = SSL_connect(s->ssl);
  if (r == 1) {
    send_connect(ep, s);
    return;
  }
  int err = SSL_get_error(s->ssl, r);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    tls_wait(ep, s, err);
    return;
  }
  long v = SSL_get_verify_result(s->ssl);
  if (v != X509_V_OK) {
    failures++;
    if (failure[0] == 0) snprintf(failure, sizeof failure, "TLS handshake: certificate verify failed: %s", X509_verify_cert_error_string(v));
    ERR_clear_error();
  } else
    tls_fail("TLS handshake", err);
  finish(ep, s, 0);
}
#endif

static void finish(int ep, struct slot *s, int ok) {
  static const unsigned char disconnect[2] = {0xe0, 0x00};
  epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
  if (ok) connects++;
#ifdef WITH_TLS
  if (s->ssl) {
    if (ok) {
      (void)SSL_write(s->ssl, disconnect, 2);
      (void)SSL_shutdown(s->ssl); /* sends close_notify; the broker's reply is not waited for */
    }
    SSL_free(s->ssl);
    s->ssl = NULL;
    ok = 0;
  }
#endif
  if (ok) (void)!write(s->fd, disconnect, 2);
  close(s->fd);
  s->fd = -1;
  s->state = IDLE;
}

static int usage(const char *argv0) {
  fprintf(stderr, "usage: %s [--ca FILE --servername NAME [--cert FILE --key FILE]] HOST PORT CONCURRENCY DURATION_MS CLIENT_ID_PREFIX [USERNAME PASSWORD]\n", argv0);
  return 2;
}

int main(int argc, char **argv) {
  const char *ca = NULL, *sni = NULL, *cert = NULL, *key = NULL;
  int a = 1;
  for (; a + 1 < argc && strncmp(argv[a], "--", 2) == 0; a += 2) {
    if (strcmp(argv[a], "--ca") == 0) ca = argv[a + 1];
    else if (strcmp(argv[a], "--servername") == 0) sni = argv[a + 1];
    else if (strcmp(argv[a], "--cert") == 0) cert = argv[a + 1];
    else if (strcmp(argv[a], "--key") == 0) key = argv[a + 1];
    else return usage(argv[0]);
  }
  int rest = argc - a;
  if (rest != 5 && rest != 7) return usage(argv[0]);
  if ((ca == NULL) != (sni == NULL) || (cert == NULL) != (key == NULL) || (cert != NULL && ca == NULL)) return usage(argv[0]);
#ifdef WITH_TLS
  if (ca) {
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* every connect is a full handshake */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
      fprintf(stderr, "cannot load CA file %s\n", ca);
      return 2;
    }
    if (cert && (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 || SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
                 SSL_CTX_check_private_key(ctx) != 1)) {
      fprintf(stderr, "cannot load client certificate %s / key %s\n", cert, key);
      return 2;
    }
    servername = sni;
  }
#else
  if (ca) {
    fprintf(stderr, "built without TLS (compile with -DWITH_TLS -lssl -lcrypto)\n");
    return 2;
  }
#endif
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)atoi(argv[a + 1]));
  if (inet_pton(AF_INET, argv[a], &addr.sin_addr) != 1) {
    fprintf(stderr, "bad IPv4 address: %s\n", argv[a]);
    return 2;
  }
  int concurrency = atoi(argv[a + 2]);
  double duration = atof(argv[a + 3]);
  prefix = argv[a + 4];
  if (rest == 7) {
    user = argv[a + 5];
    pass = argv[a + 6];
  }
  if (concurrency < 1 || concurrency > 4096 || duration <= 0 || strlen(prefix) > 64) {
    fprintf(stderr, "bad arguments\n");
    return 2;
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct slot *slots = calloc((size_t)concurrency, sizeof *slots);
  struct epoll_event events[256];
  double t0 = now_ms(), end = t0 + duration;
  for (int i = 0; i < concurrency; i++) start(ep, &slots[i]);
  int running = 1;
  while (running) {
    int n = epoll_wait(ep, events, 256, 100);
    if (n < 0 && errno != EINTR) {
      fail("epoll_wait", errno);
      break;
    }
    for (int i = 0; i < n; i++) {
      struct slot *s = events[i].data.ptr;
      if (s->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          fail("connect", err);
          finish(ep, s, 0);
          continue;
        }
#ifdef WITH_TLS
        if (ctx) {
          s->ssl = SSL_new(ctx);
          SSL_set_fd(s->ssl, s->fd);
          SSL_set_tlsext_host_name(s->ssl, servername);
          SSL_set1_host(s->ssl, servername);
          s->state = HANDSHAKE;
          handshake(ep, s);
          continue;
        }
#endif
        send_connect(ep, s);
#ifdef WITH_TLS
      } else if (s->state == HANDSHAKE) {
        handshake(ep, s);
#endif
      } else if (s->state == WAIT_CONNACK) {
        ssize_t r;
#ifdef WITH_TLS
        if (s->ssl) {
          int k = SSL_read(s->ssl, s->in + s->have, (int)sizeof s->in - s->have);
          if (k <= 0) {
            int err = SSL_get_error(s->ssl, k);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
              tls_wait(ep, s, err);
              continue;
            }
            tls_fail("read CONNACK", err);
            finish(ep, s, 0);
            continue;
          }
          r = k;
        } else
#endif
        {
          r = read(s->fd, s->in + s->have, sizeof s->in - (size_t)s->have);
          if (r <= 0) {
            if (r < 0 && errno == EAGAIN) continue;
            fail("read CONNACK", r == 0 ? ECONNRESET : errno);
            finish(ep, s, 0);
            continue;
          }
        }
        s->have += (int)r;
        if (s->have < 4) continue;
        if (s->in[0] != 0x20 || s->in[1] != 0x02 || s->in[3] != 0x00) {
          if (failure[0] == 0)
            snprintf(failure, sizeof failure, "CONNACK refused or malformed: %02x %02x %02x %02x", s->in[0], s->in[1], s->in[2], s->in[3]);
          failures++;
          finish(ep, s, 0);
          continue;
        }
        finish(ep, s, 1);
      }
    }
    double t = now_ms();
    running = 0;
    for (int i = 0; i < concurrency; i++) {
      if (slots[i].state == IDLE && t < end && failures == 0) start(ep, &slots[i]);
      if (slots[i].state != IDLE) running = 1;
    }
  }
  double wall = now_ms() - t0;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3 + ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3;
  printf("{\"connects\":%lld,\"failures\":%lld,\"failure\":", connects, failures);
  if (failure[0]) {
    putchar('"');
    for (const char *p = failure; *p; p++)
      if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) putchar(*p);
    putchar('"');
  } else
    printf("null");
  printf(",\"wallMs\":%.1f,\"cpuMs\":%.1f}\n", wall, cpu);
  return failures == 0 ? 0 : 1;
}
