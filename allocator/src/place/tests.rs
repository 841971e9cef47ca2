//! Placement tests: capacity never exceeded, the exact solver's optimum,
//! and bad input named.

use proptest::prelude::*;

use super::*;

fn node(name: &str, cpu: f64, memory: f64) -> Node {
    Node {
        name: name.into(),
        cpu,
        memory,
    }
}

fn demand(service: &str, cpu: &[f64], memory: &[f64]) -> Demand {
    Demand {
        service: service.into(),
        cpu: cpu.to_vec(),
        memory: memory.to_vec(),
    }
}

fn within_capacity(p: &Placement, nodes: &[Node], demands: &[Demand]) -> bool {
    (0..nodes.len()).all(|n| {
        p.headroom(n, nodes, demands)
            .iter()
            .all(|(c, m)| *c >= -1e-6 * nodes[n].cpu && *m >= -1e-6 * nodes[n].memory)
    })
}

#[test]
fn peaks_that_do_not_coincide_share_a_node() {
    let nodes = vec![node("a", 4.0, 8.0), node("b", 4.0, 8.0)];
    // Static peaks: 3 + 3 cores do not fit one 4-core node.
    let stat = vec![demand("x", &[3.0], &[1.0]), demand("y", &[3.0], &[1.0])];
    assert_eq!(exact(&nodes, &stat).unwrap().nodes_used(), 2);
    // Over time, x peaks early and y late: they share.
    let planned = vec![
        demand("x", &[3.0, 1.0], &[1.0, 1.0]),
        demand("y", &[1.0, 3.0], &[1.0, 1.0]),
    ];
    let p = exact(&nodes, &planned).unwrap();
    assert_eq!(p.nodes_used(), 1);
    assert!(within_capacity(&p, &nodes, &planned));
}

#[test]
fn the_exact_solver_finds_the_fewest_nodes() {
    // 20 cores of demand on 10-core nodes: two nodes, packed full.
    let nodes: Vec<Node> = (0..4)
        .map(|i| node(&format!("n{i}"), 10.0, 100.0))
        .collect();
    let sizes = [6.0, 5.0, 4.0, 3.0, 2.0];
    let ds: Vec<Demand> = sizes
        .iter()
        .enumerate()
        .map(|(i, c)| demand(&format!("s{i}"), &[*c], &[1.0]))
        .collect();
    let p = exact(&nodes, &ds).unwrap();
    assert_eq!(p.nodes_used(), 2, "6+4 and 5+3+2");
    assert!(p.node.iter().all(Option::is_some));
}

#[test]
fn what_fits_nowhere_is_reported_and_bad_input_is_named() {
    let nodes = vec![node("a", 2.0, 8.0)];
    let ds = vec![demand("big", &[3.0], &[1.0]), demand("ok", &[1.0], &[1.0])];
    for p in [exact(&nodes, &ds).unwrap(), heuristic(&nodes, &ds).unwrap()] {
        assert_eq!(p.node, vec![None, Some(0)]);
    }
    let e = heuristic(&[node("z", 0.0, 1.0)], &ds).unwrap_err();
    assert!(e.to_string().contains("node \"z\""), "{e}");
    assert!(heuristic(&nodes, &[]).is_err());
    let twice = [node("a", 2.0, 8.0), node("a", 2.0, 8.0)];
    let e = exact(&twice, &ds).unwrap_err();
    assert!(e.to_string().contains("node \"a\" is given twice"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn placements_never_exceed_a_node(
        caps in prop::collection::vec((1.0f64..16.0, 1.0f64..64.0), 1..5),
        loads in prop::collection::vec(prop::collection::vec((0.0f64..8.0, 0.0f64..32.0), 3), 1..7),
    ) {
        let nodes: Vec<Node> = caps.iter().enumerate().map(|(i, (c, m))| node(&format!("n{i}"), *c, *m)).collect();
        let ds: Vec<Demand> = loads.iter().enumerate().map(|(i, l)| Demand {
            service: format!("s{i}"),
            cpu: l.iter().map(|x| x.0).collect(),
            memory: l.iter().map(|x| x.1).collect(),
        }).collect();
        let h = heuristic(&nodes, &ds).unwrap();
        prop_assert!(within_capacity(&h, &nodes, &ds));
        let e = exact(&nodes, &ds).unwrap();
        prop_assert!(within_capacity(&e, &nodes, &ds));
        let placed = |p: &Placement| p.node.iter().filter(|n| n.is_some()).count();
        // The exact answer places at least as many, on no more nodes when it places as many.
        prop_assert!(placed(&e) >= placed(&h));
        if placed(&e) == placed(&h) {
            prop_assert!(e.nodes_used() <= h.nodes_used());
        }
    }
}
