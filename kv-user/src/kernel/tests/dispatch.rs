//! The dispatcher (`kv_dispatch`) run on crafted packets through BPF_PROG_TEST_RUN, in front of two
//! instances' programs: each port reaches its own program and cache, anything else passes untouched.

use aya::maps::{Array, ProgramArray};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use kv_common::xdp_action::{XDP_PASS, XDP_TX};
use kv_common::Counter;

use super::{load_with, packet, put, reply_text, PORT};
use crate::kernel::shared::DISPATCH_OBJECT;

const PORT2: u16 = 11311;

fn dispatcher() -> Ebpf {
    let mut ebpf = EbpfLoader::new().load(DISPATCH_OBJECT).expect("loading the dispatcher's object");
    let prog: &mut Xdp = ebpf.program_mut("kv_dispatch").unwrap().try_into().unwrap();
    prog.load().expect("verifying the dispatcher");
    ebpf
}

fn run(ebpf: &mut Ebpf, pkt: &[u8]) -> (u32, Vec<u8>) {
    let prog: &mut Xdp = ebpf.program_mut("kv_dispatch").unwrap().try_into().unwrap();
    let mut out = vec![0u8; 4096];
    let res = prog
        .test_run(TestRunOptions { data_in: Some(pkt), data_out: Some(&mut out), ..Default::default() })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

#[test]
fn each_port_reaches_its_own_instance() {
    let Some(mut one) = load_with(1024) else { return };
    let mut two = crate::kernel::KernelPath::load(crate::kernel::KernelOpts {
        port: PORT2,
        cache_entries: 1024,
        ..Default::default()
    })
    .unwrap();
    two.allow(std::net::Ipv4Addr::new(10, 0, 0, 0).into(), 8).unwrap();
    put(&mut one, b"k", 1, 1, b"one", 0);
    put(&mut two, b"k", 2, 2, b"two!", 0);
    put(&mut two, b"only2", 0, 3, b"x", 0);
    let mut d = dispatcher();
    {
        let mut progs = ProgramArray::try_from(d.map_mut("PROGS").unwrap()).unwrap();
        progs.set(0, one.program().unwrap().fd().unwrap(), 0).unwrap();
        progs.set(5, two.program().unwrap().fd().unwrap(), 0).unwrap();
    }
    // No port entered yet: everything passes, untouched.
    let req = packet(PORT, 1, 0, 1, b"get k\r\n");
    assert_eq!(run(&mut d, &req), (XDP_PASS, req.clone()));
    {
        let mut ports: Array<_, u32> = Array::try_from(d.map_mut("PORTS").unwrap()).unwrap();
        ports.set(PORT as u32, 1, 0).unwrap();
        ports.set(PORT2 as u32, 6, 0).unwrap();
        ports.set(0, 1, 0).unwrap(); // port 0 is never dispatched, whatever PORTS says
    }
    let (action, out) = run(&mut d, &req);
    assert_eq!(action, XDP_TX);
    assert_eq!(reply_text(&req, &out), b"VALUE k 1 3\r\none\r\nEND\r\n");
    let req2 = packet(PORT2, 2, 0, 1, b"get k\r\n");
    let (action, out) = run(&mut d, &req2);
    assert_eq!(action, XDP_TX);
    assert_eq!(reply_text(&req2, &out), b"VALUE k 2 4\r\ntwo!\r\nEND\r\n");
    // The first instance does not see the second's keys: a miss there passes.
    let miss = packet(PORT, 3, 0, 1, b"get only2\r\n");
    assert_eq!(run(&mut d, &miss), (XDP_PASS, miss.clone()));
    assert_eq!(one.counter(Counter::Hits).unwrap(), 1);
    assert_eq!(two.counter(Counter::Hits).unwrap(), 1);
    // Ports nobody serves, port 0, and non-UDP frames pass untouched.
    for pkt in [packet(11411, 4, 0, 1, b"get k\r\n"), packet(0, 5, 0, 1, b"get k\r\n"), vec![0u8; 64]] {
        assert_eq!(run(&mut d, &pkt), (XDP_PASS, pkt.clone()));
    }
    // An emptied slot (its instance leaving) fails the tail call: the frame passes.
    ProgramArray::try_from(d.map_mut("PROGS").unwrap()).unwrap().clear_index(&5).unwrap();
    assert_eq!(run(&mut d, &req2), (XDP_PASS, req2.clone()));
}
