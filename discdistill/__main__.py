from discdistill.cli import main

main()
