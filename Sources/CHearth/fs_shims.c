/* Wrappers for calls Swift's Glibc module does not export; see hearth_fs.h. */
#define _GNU_SOURCE
#include "hearth_fs.h"

#include <sys/xattr.h>
#include <unistd.h>

int hearth_fsetxattr(int fd, const char *name, const void *value, size_t size, int flags) {
    return fsetxattr(fd, name, value, size, flags);
}

ssize_t hearth_fgetxattr(int fd, const char *name, void *value, size_t size) {
    return fgetxattr(fd, name, value, size);
}

ssize_t hearth_flistxattr(int fd, char *list, size_t size) {
    return flistxattr(fd, list, size);
}

ssize_t hearth_lgetxattr(const char *path, const char *name, void *value, size_t size) {
    return lgetxattr(path, name, value, size);
}

ssize_t hearth_llistxattr(const char *path, char *list, size_t size) {
    return llistxattr(path, list, size);
}

int hearth_syncfs(int fd) {
    return syncfs(fd);
}
