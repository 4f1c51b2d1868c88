/* The negative control of scripts/test-vm: eject the way rip did before its fix (open O_RDONLY |
 * O_NONBLOCK, one bare CDROMEJECT, the answer taken as it comes), and print what the kernel answered
 * and what CDROM_DRIVE_STATUS says afterwards. On a door locked by udev (cdrom_id --lock-media) the
 * answer is positive (a SCSI status) and the tray stays shut: the defect. Built static on the host,
 * run in the guest.   eject-probe /dev/sr0   prints: eject=N errno=E status=S */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/cdrom.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DEVICE\n", argv[0]);
        return 64;
    }
    int fd = open(argv[1], O_RDONLY | O_NONBLOCK);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    errno = 0;
    int ret = ioctl(fd, CDROMEJECT);
    int err = ret < 0 ? errno : 0;
    usleep(1500 * 1000);
    int status = ioctl(fd, CDROM_DRIVE_STATUS, CDSL_CURRENT);
    printf("eject=%d errno=%d status=%d\n", ret, err, status);
    close(fd);
    return 0;
}
