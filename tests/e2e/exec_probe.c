/* A probe for tests/e2e/exec.rs, linked statically (the test image has no
 * libc) by the test itself with `cc -static`:
 *
 *   probe raw                   opens a packet socket and a raw IPv4 socket
 *                               (both need CAP_NET_RAW); prints each outcome
 *   probe writable PATH...      asks access(2) whether each PATH is writable
 *                               (busybox's `test -w` says yes to root without
 *                               asking); prints each answer
 *   probe key DESC              looks for the user key DESC in the session
 *                               keyring; prints "found: DATA" or the error
 *   probe module                tries finit_module(2) and init_module(2) (an
 *                               empty module: only the permission is asked)
 *   probe ptrace PID            tries to PTRACE_ATTACH to PID
 *   probe mount DIR             tries to mount a tmpfs on DIR
 *   (each of these three prints "NAME: ok" or "NAME: ERROR")
 *   probe host-key DESC DATA CMD...
 *                               joins a new session keyring, adds the user
 *                               key DESC (readable by its possessors only),
 *                               then execs CMD
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* linux/keyctl.h */
#define KEY_SPEC_SESSION_KEYRING -3
#define KEYCTL_JOIN_SESSION_KEYRING 1
#define KEYCTL_SETPERM 5
#define KEYCTL_SEARCH 10
#define KEYCTL_READ 11
/* KEY_POS_ALL: the possessor may do anything; anyone else nothing. */
#define POSSESSOR_ONLY 0x3f000000

static void outcome(const char *what, int fd) {
    if (fd < 0)
        printf("%s: %s\n", what, strerror(errno));
    else
        printf("%s: ok\n", what);
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "raw") == 0) {
        outcome("packet", socket(AF_PACKET, SOCK_RAW, htons(0x0003 /* ETH_P_ALL */)));
        outcome("inet", socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "writable") == 0) {
        for (int i = 2; i < argc; i++) {
            if (access(argv[i], W_OK) == 0)
                printf("%s: writable\n", argv[i]);
            else
                printf("%s: %s\n", argv[i], strerror(errno));
        }
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "key") == 0) {
        long id = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, "user", argv[2], 0);
        if (id < 0) {
            printf("%s\n", strerror(errno));
            return 1;
        }
        char buf[256];
        long n = syscall(SYS_keyctl, KEYCTL_READ, id, buf, sizeof buf);
        if (n < 0) {
            printf("%s\n", strerror(errno));
            return 1;
        }
        printf("found: %.*s\n", (int)(n < (long)sizeof buf ? n : (long)sizeof buf), buf);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "module") == 0) {
        int fd = open("/bin/busybox", O_RDONLY | O_CLOEXEC);
        long r = syscall(SYS_finit_module, fd, "", 0);
        printf("finit_module: %s\n", r == 0 ? "ok" : strerror(errno));
        r = syscall(SYS_init_module, "", 0UL, "");
        printf("init_module: %s\n", r == 0 ? "ok" : strerror(errno));
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "ptrace") == 0) {
        long r = ptrace(PTRACE_ATTACH, atoi(argv[2]), NULL, NULL);
        printf("ptrace: %s\n", r == 0 ? "ok" : strerror(errno));
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "mount") == 0) {
        int r = mount("probe", argv[2], "tmpfs", 0, "");
        printf("mount: %s\n", r == 0 ? "ok" : strerror(errno));
        return 0;
    }
    if (argc >= 5 && strcmp(argv[1], "host-key") == 0) {
        if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0) {
            perror("joining a new session keyring");
            return 2;
        }
        long id = syscall(SYS_add_key, "user", argv[2], argv[3], strlen(argv[3]),
                          KEY_SPEC_SESSION_KEYRING);
        if (id < 0 || syscall(SYS_keyctl, KEYCTL_SETPERM, id, POSSESSOR_ONLY) < 0) {
            perror("adding the key");
            return 2;
        }
        execvp(argv[4], argv + 4);
        perror(argv[4]);
        return 127;
    }
    fprintf(stderr, "usage: probe raw | writable PATH... | key DESC | module | ptrace PID | mount DIR | host-key DESC DATA CMD...\n");
    return 2;
}
