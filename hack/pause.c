/* The pod sandbox's process (the "pause" container): it holds the pod's
 * namespaces open and does nothing else until it is told to stop. Built
 * static by `make images` (powgate_testbed.images), so its image is this one
 * file and nothing has to be pulled. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signum) {
    (void)signum;
    _exit(0);
}

/* PID 1 of a pod sharing its process namespace adopts orphans: reap them. */
static void reap(int signum) {
    (void)signum;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    /* PID 1 of a container ignores signals it has no handler for. */
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    signal(SIGCHLD, reap);
    for (;;) {
        pause();
    }
    return EXIT_FAILURE;
}
