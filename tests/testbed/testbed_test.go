package testbed

import (
	"os"
	"strings"
	"testing"
)

func TestScriptFound(t *testing.T) {
	st, err := os.Stat(Script())
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&0o111 == 0 {
		t.Errorf("%s is not executable", Script())
	}
	b, err := os.ReadFile(Script())
	if err != nil {
		t.Fatal(err)
	}
	// The Go constants and the script must agree.
	for _, want := range []string{
		"HOST_IP=" + HostIP, "DPU_IP=" + DPUIP, "HOST_NS=" + HostNetns, "DPU_NS=" + DPUNetns,
		"HOST_VETH=" + HostVeth, "DPU_VETH=" + DPUVeth, "CGROUP=" + DPUCgroup,
		"RUN_DIR=" + RunDir, "LIB_DIR=" + LibDir, "DPU_CONTAINERD_SOCK=" + DPUContainerdAddress,
		"HOST_CONTAINERD_SOCK=$RUN_DIR/containerd/containerd.sock", "DPU_SNAPSHOTS=" + SnapshotsDir,
		"DPU_CONTAINERD_CONFIG=" + DPUContainerdConfig, "CERT_DIR=$RUN_DIR/certs", BusyboxImage, BigImage,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("script lacks %q", want)
		}
	}
	if HostContainerdAddress != RunDir+"/containerd/containerd.sock" || CertDir != RunDir+"/certs" {
		t.Error("HostContainerdAddress or CertDir disagree with RunDir")
	}
}

func TestResultErr(t *testing.T) {
	if err := (Result{}).Err(); err != nil {
		t.Errorf("exit 0: %v", err)
	}
	err := Result{ExitCode: 2, Stderr: "no such file\n"}.Err()
	if err == nil || !strings.Contains(err.Error(), "exit code 2: no such file") {
		t.Errorf("exit 2: %v", err)
	}
}
