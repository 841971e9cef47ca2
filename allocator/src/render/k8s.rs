//! Kubernetes output: one quantity formatter, `resources:` patches per
//! container and the plan as an in-place resize schedule, through serde.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    allocate::{PlanReport, Recommendation},
    error::Result,
    params::Kind,
};

/// A quantity as Kubernetes writes it, rounded up (never below the
/// allocation): CPU in millicores (`250m`) or whole cores (`2`); bytes in
/// MiB or the largest binary suffix that is exact (`512Mi`, `1536Mi`,
/// `60Gi`), by the shared formatter ([`headroom_units::kubernetes`]).
pub fn quantity(resource: &str, value: f64) -> String {
    headroom_units::kubernetes(super::unit_of(resource), value)
}

/// Whether Kubernetes allocates the resource (requests and limits).
fn allocatable(resource: &str) -> bool {
    matches!(Kind::of(resource), Kind::Cpu | Kind::Memory)
}

/// A container's `resources:`.
#[derive(Debug, Serialize)]
struct Resources {
    requests: BTreeMap<String, String>,
    limits: BTreeMap<String, String>,
}

/// A container, by name, with its resources.
#[derive(Debug, Serialize)]
struct Container {
    name: String,
    resources: Resources,
}

/// A pod spec holding only the containers patched.
#[derive(Debug, Serialize)]
struct PodSpec {
    containers: Vec<Container>,
}

/// A pod template.
#[derive(Debug, Serialize)]
struct Template {
    spec: PodSpec,
}

/// A deployment's spec holding only its template.
#[derive(Debug, Serialize)]
struct DeploymentSpec {
    template: Template,
}

/// A strategic-merge patch of a deployment.
#[derive(Debug, Serialize)]
struct DeploymentPatch {
    spec: DeploymentSpec,
}

/// A resize patch of a pod (`--subresource resize`).
#[derive(Debug, Serialize)]
struct PodPatch {
    spec: PodSpec,
}

/// One step of a resize schedule.
#[derive(Debug, Serialize)]
struct Step {
    /// Offset after the task starts, e.g. `300s`.
    after: String,
    container: String,
    /// The pod patch as one line of JSON, for `kubectl patch --patch`.
    patch: String,
}

/// The plan as a resize schedule.
#[derive(Debug, Serialize)]
struct Schedule {
    schedule: Vec<Step>,
}

/// One YAML document per service: a strategic-merge patch setting its
/// container's (named as the service) requests and limits of CPU and memory.
pub fn patches(answer: &[Recommendation]) -> Result<String> {
    let mut services: Vec<&str> = answer.iter().map(|a| a.service.as_str()).collect();
    services.dedup();
    let mut out = String::new();
    for service in services {
        let mine = || {
            answer
                .iter()
                .filter(move |a| a.service == service && allocatable(&a.resource))
        };
        let amounts = |f: fn(&Recommendation) -> f64| {
            mine()
                .map(|a| (a.resource.clone(), quantity(&a.resource, f(a))))
                .collect()
        };
        let patch = DeploymentPatch {
            spec: DeploymentSpec {
                template: Template {
                    spec: PodSpec {
                        containers: vec![Container {
                            name: service.to_string(),
                            resources: Resources {
                                requests: amounts(|a| a.alloc.request),
                                limits: amounts(|a| a.alloc.limit),
                            },
                        }],
                    },
                },
            },
        };
        out.push_str(&format!(
            "# kubectl patch deployment {service} --patch-file <this document>\n"
        ));
        out.push_str(&serde_norway::to_string(&patch)?);
        out.push_str("---\n");
    }
    Ok(out)
}

/// The plans as an in-place resize schedule: one pod patch per segment
/// start of every CPU and memory plan.
pub fn schedule(answer: &PlanReport) -> Result<String> {
    let mut steps = Vec::new();
    for p in answer
        .plans
        .iter()
        .filter(|p| allocatable(&p.recommendation.resource))
    {
        let (service, resource) = (&p.recommendation.service, &p.recommendation.resource);
        for s in &p.segments {
            let one = |v: f64| BTreeMap::from([(resource.clone(), quantity(resource, v))]);
            let patch = PodPatch {
                spec: PodSpec {
                    containers: vec![Container {
                        name: service.clone(),
                        resources: Resources {
                            requests: one(s.request),
                            limits: one(s.limit),
                        },
                    }],
                },
            };
            steps.push(Step {
                after: format!("{:.0}s", s.start),
                container: service.clone(),
                patch: serde_json::to_string(&patch)?,
            });
        }
    }
    Ok(format!(
        "# resize schedule: at each offset after the task starts, apply the patch with\n\
         # kubectl patch pod <pod> --subresource resize --patch '<patch>'\n{}",
        serde_norway::to_string(&Schedule { schedule: steps })?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;
    const GIB: f64 = 1024.0 * MIB;

    #[test]
    fn quantities_take_the_largest_exact_suffix_and_round_up() {
        assert_eq!(quantity("memory", 60.0 * GIB), "60Gi");
        assert_eq!(quantity("memory", 1.5 * GIB), "1536Mi");
        assert_eq!(quantity("memory", 512.0 * MIB), "512Mi");
        assert_eq!(quantity("memory", 2048.0 * GIB), "2Ti");
        assert_eq!(quantity("memory", 512.0 * MIB + 1.0), "513Mi");
        assert_eq!(quantity("memory", 0.0), "0");
        assert_eq!(quantity("cpu", 0.25), "250m");
        assert_eq!(quantity("cpu", 0.29), "290m");
        assert_eq!(quantity("cpu", 2.0), "2");
        assert_eq!(quantity("cpu", 2.0004), "2001m");
    }

    fn rec(service: &str, resource: &str, request: f64, limit: f64) -> Recommendation {
        Recommendation {
            service: service.into(),
            resource: resource.into(),
            strategy: crate::strategy::Strategy::Max,
            alloc: crate::strategy::Alloc {
                request,
                limit,
                expected_slack: 0.0,
                violation_risk: 0.0,
                samples_used: 0,
                detail: String::new(),
            },
            model_version: String::new(),
            fallback: None,
            unanswered: None,
        }
    }

    #[test]
    fn a_patch_is_a_yaml_document_per_container() {
        let out = patches(&[
            rec("api", "cpu", 0.25, 0.5),
            rec("api", "memory", 60.0 * GIB, 60.0 * GIB),
            rec("api", "disk_read", 1e6, 1e6),
        ])
        .unwrap();
        let doc = out
            .split("---\n")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: serde_norway::Value = serde_norway::from_str(&doc).unwrap();
        let container = &parsed["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["name"], "api");
        assert_eq!(container["resources"]["requests"]["cpu"], "250m");
        assert_eq!(container["resources"]["limits"]["cpu"], "500m");
        assert_eq!(container["resources"]["requests"]["memory"], "60Gi");
        assert!(
            container["resources"]["requests"]
                .get("disk_read")
                .is_none()
        );
    }

    #[test]
    fn the_table_and_the_plan_read_in_millicores_and_binary_suffixes() {
        let answer = [
            rec("api", "cpu", 0.25, 0.5),
            rec("api", "memory", 248_153_481.264_6, 1.8 * GIB),
            rec("db", "memory", 60.0 * GIB, 60.0 * GIB),
        ];
        let table = super::super::recommendations(&answer, super::super::Output::Table).unwrap();
        let words: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(words[1][..4], ["api", "cpu", "250m", "500m"], "{table}");
        assert_eq!(
            words[2][..4],
            ["api", "memory", "237Mi", "1.8Gi"],
            "{table}"
        );
        assert_eq!(words[3][..4], ["db", "memory", "60Gi", "60Gi"], "{table}");
        assert!(!table.contains("248153481"), "{table}");
        let k8s = patches(&answer).unwrap();
        assert!(k8s.contains("memory: 60Gi"), "{k8s}");
        assert!(k8s.contains("cpu: 250m"), "{k8s}");
        assert!(k8s.contains("memory: 237Mi"), "{k8s}");
        assert!(
            k8s.contains("memory: 1844Mi"),
            "1.8 GiB rounds up to a MiB: {k8s}"
        );
    }

    #[test]
    fn recommendations_as_csv_have_a_header_and_base_units() {
        let out = super::super::recommendations(
            &[
                rec("api", "cpu", 0.25, 0.5),
                rec("api", "memory", 60.0 * GIB, 60.0 * GIB),
            ],
            super::super::Output::Csv,
        )
        .unwrap();
        let mut rows = csv::Reader::from_reader(out.as_bytes());
        let header = rows.headers().unwrap().clone();
        assert_eq!(&header[0], "service");
        assert!(header.iter().any(|h| h == "unit"), "{header:?}");
        let all: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[1][2].parse::<f64>().unwrap(),
            60.0 * GIB,
            "bytes, not GiB"
        );
    }
}
