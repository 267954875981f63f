package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
)

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte(`
agent_address = "tcp://192.0.2.1:7700"
[tls]
ca_file = "/etc/offload/certs/ca.pem"
cert_file = "/etc/offload/certs/dpu.pem"
key_file = "/etc/offload/certs/dpu-key.pem"
[timeouts]
dial = "3s"
stdio_drain = "250ms"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Timeouts.Dial.D() != 3*time.Second || c.Timeouts.StdioDrain.D() != 250*time.Millisecond {
		t.Errorf("timeouts %+v", c.Timeouts)
	}
	if c.Timeouts.RPC.D() != 60*time.Second {
		t.Errorf("rpc default %v", c.Timeouts.RPC.D())
	}
	if sec := c.Security(); sec.CertFile != "/etc/offload/certs/dpu.pem" || sec.Insecure {
		t.Errorf("security %+v", sec)
	}
	// The bundle copy round-trips through the strict parser.
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	c2, err := ParseConfig(b)
	if err != nil {
		t.Fatalf("re-parse marshalled config: %v\n%s", err, b)
	}
	if *c2 != *c {
		t.Errorf("round trip %+v != %+v", c2, c)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for name, tc := range map[string]struct{ in, want string }{
		"unknown key":      {`agent_address = "unix:///run/a.sock"` + "\nagent_adress = \"x\"\n", "agent_adress"},
		"unknown table":    {`agent_address = "unix:///run/a.sock"` + "\n[tls]\ncafile = \"x\"\n", "cafile"},
		"no address":       {`[timeouts]` + "\ndial = \"1s\"\n", "agent_address is required"},
		"relative unix":    {`agent_address = "unix://run/a.sock"`, "absolute"},
		"tcp without tls":  {`agent_address = "tcp://192.0.2.1:7700"`, "tls.ca_file"},
		"bad duration":     {`agent_address = "unix:///a"` + "\n[timeouts]\ndial = \"soon\"\n", "soon"},
		"negative":         {`agent_address = "unix:///a"` + "\n[timeouts]\nrpc = \"-1s\"\n", "negative"},
		"not toml":         {`agent_address = `, ""},
		"vsock bad cid":    {`agent_address = "vsock://x:1"`, "CID"},
		"unknown scheme":   {`agent_address = "http://192.0.2.1:1"`, "scheme"},
		"wrong value type": {`agent_address = 7`, ""},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.in))
			if err == nil {
				t.Fatal("no error")
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("%v is not InvalidArgument", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	// tcp with insecure is allowed (the transport logs it loudly).
	if _, err := ParseConfig([]byte("agent_address = \"tcp://192.0.2.1:7700\"\n[tls]\ninsecure = true\n")); err != nil {
		t.Errorf("insecure tcp: %v", err)
	}
}

func TestConfigFromOptions(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "shim.toml")
	if err := os.WriteFile(path, []byte(`agent_address = "unix:///run/offload/agent.sock"`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := ConfigFromOptions(&runtimeoptions.Options{ConfigPath: path})
	if err != nil || c.AgentAddress != "unix:///run/offload/agent.sock" {
		t.Fatalf("config path: %+v %v", c, err)
	}
	// The CRI handler's options table arrives as ConfigBody.
	c, err = ConfigFromOptions(&runtimeoptions.Options{ConfigBody: []byte("agent_address = \"vsock://3:7700\"\n")})
	if err != nil || c.AgentAddress != "vsock://3:7700" {
		t.Fatalf("config body: %+v %v", c, err)
	}
	if _, err := ConfigFromOptions(&runtimeoptions.Options{ConfigPath: filepath.Join(dir, "missing.toml")}); err == nil {
		t.Error("missing config file accepted")
	}
	a, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := ConfigFromAny(a); err != nil || c.AgentAddress != "unix:///run/offload/agent.sock" {
		t.Fatalf("from any: %+v %v", c, err)
	}
	// Options of another runtime type are refused, not ignored.
	other, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other.TypeUrl = "containerd.runc.v1.Options"
	if _, err := ConfigFromAny(other); !errdefs.IsInvalidArgument(err) {
		t.Errorf("foreign options: %v", err)
	}
}

// The example shipped in contrib parses with the strict parser.
func TestContribShimConfigParses(t *testing.T) {
	c, err := LoadConfigFile("../contrib/containerd/shim.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.AgentAddress == "" || c.TLS.CertFile == "" || c.Timeouts.StdioDrain.D() != 5*time.Second {
		t.Errorf("contrib shim.toml: %+v", c)
	}
}
