/*
 * kvm-probe: exit 0 when this host's /dev/kvm can create a virtual machine.
 *
 * The installer labels a node crius.io/kvm=true only when this passes. It
 * opens the device, checks the KVM API version (12, the only stable one),
 * creates a VM and checks KVM_CAP_USER_MEMORY, which a VMM needs to give the
 * guest memory. It does not boot a guest: that needs crius's kvm handler
 * (a VMM and a guest kernel), which this probe must not depend on.
 *
 * Built statically by deploy/image/build.py: the installer image has no libc.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "/dev/kvm";
	int kvm = open(path, O_RDWR | O_CLOEXEC);
	if (kvm < 0) {
		fprintf(stderr, "kvm-probe: open %s: %s\n", path, strerror(errno));
		return 1;
	}
	int version = ioctl(kvm, KVM_GET_API_VERSION, 0);
	if (version != KVM_API_VERSION) {
		fprintf(stderr, "kvm-probe: %s: API version %d, need %d\n", path, version, KVM_API_VERSION);
		return 1;
	}
	if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) <= 0) {
		fprintf(stderr, "kvm-probe: %s: no KVM_CAP_USER_MEMORY\n", path);
		return 1;
	}
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) {
		fprintf(stderr, "kvm-probe: %s: create a VM: %s\n", path, strerror(errno));
		return 1;
	}
	close(vm);
	close(kvm);
	printf("kvm-probe: %s creates VMs (API version %d)\n", path, version);
	return 0;
}
